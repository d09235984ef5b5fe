"""``chipfit --help`` at common terminal widths: every command's summary is one whole short sentence."""

from __future__ import annotations

import inspect
import re

import pytest
from typer.testing import CliRunner

from chipfit.cli import app

_ROW = re.compile(r"^│ (\S+)?\s+(.*?)\s*│$")


def _summaries(width: int) -> dict[str, str]:
    """The Commands panel of ``chipfit --help`` rendered ``width`` columns wide: name → summary, with the
    summary's wrapped lines joined by one space."""
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": str(width), "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line and line.startswith("╭"))
    assert len(lines[start]) == width  # the panel spans the terminal: COLUMNS took effect
    rows: dict[str, str] = {}
    name = ""
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        m = _ROW.match(line)
        assert m, f"not a row of the commands panel: {line!r}"
        if m.group(1) and line.startswith("│ " + m.group(1)):
            name = m.group(1)
            rows[name] = m.group(2)
        else:  # a wrapped line of the same summary
            rows[name] = f"{rows[name]} {m.group(2)}".strip()
    return rows


def _first_paragraph(command: object) -> str:
    return inspect.cleandoc(getattr(command, "help", None) or "").split("\n\n")[0]


@pytest.mark.parametrize("width", [80, 120])
def test_every_command_summary_is_a_whole_sentence(width: int) -> None:
    import typer.main

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    shown = _summaries(width)
    assert set(shown) == set(commands)
    for name, summary in shown.items():
        first = _first_paragraph(commands[name])
        assert "\n" not in first, f"{name}: the summary (first paragraph of its help) spans lines: {first!r}"
        assert summary == first, f"{name}: shown as {summary!r}, written as {first!r}"  # no word cut, no '…'
        assert summary.endswith(".") and "…" not in summary, f"{name}: {summary!r}"
        assert summary.count(". ") == 0 and summary.count("; ") == 0, f"{name}: one sentence, got {summary!r}"
        assert len(summary) <= 90, f"{name}: a short sentence (one line at 120 columns), got {len(summary)} chars"


def test_the_app_summary_names_cost() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert "latency, memory, accuracy, cost." in result.output


def test_help_paragraphs_are_reflowed_to_the_terminal_width() -> None:
    from chipfit.cli.common import reflow

    assert reflow("Short summary.\n\n    Details wrapped\n    in the source.\n") == (
        "Short summary.\n\nDetails wrapped in the source."
    )
    assert reflow("One.\n\n\b\nkept\nas lines") == "One.\n\n\b\nkept\nas lines"  # click's no-rewrap marker
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    # wrapped in the docstring after "only as far as", one line at 200 columns
    assert "Batches grow under load only as far as the p99 SLO allows; requests that cannot meet it" in result.output
