"""The ``fit`` candidates table, laid out for the terminal's width: every number whole at any width from 80
columns up. Each numeric column is exactly as wide as its widest value; the names (variant, options) take what
is left and wrap. Where even that does not fit, the layout gives way step by step: variant and options share
one column, the batch size joins the options, and at last the least needed numeric columns are left out (said
in a note under the table; ``--json`` and report.html hold every value)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table
from rich.text import Text

from chipfit.report.plots import compact_number

if TYPE_CHECKING:
    from chipfit.result import FitResult
    from chipfit.search.select import CandidateResult

__all__ = ["fit_table", "fmt", "p99_text"]

GAP = 2  # characters between two columns (box.SIMPLE_HEAD, collapsed padding)
_SQUEEZED = 8  # a text column's width when nothing else fits (words fold)
_CANDIDATE_MIN = 20  # variant and options in one column: narrower than this, the numbers give way


def fmt(v: Any, digits: int = 3) -> str:
    """A number in few characters: ``digits`` significant digits, large values as integers (75500, not
    7.55e+04), exponents without padding (3.1e-7)."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return compact_number(v, digits)


@dataclass
class _Col:
    header: str
    cells: list[str] = field(default_factory=list)  # rich markup
    numeric: bool = True  # numeric: never wrapped, never cut; otherwise wraps (names, violations)
    justify: str = "right"
    least: int = 8  # a text column's narrowest width

    def longest_word(self) -> int:
        return max((len(w) for c in self.cells for w in Text.from_markup(c).plain.split()), default=0)

    def widths(self) -> tuple[int, int]:
        """(narrowest, natural): a numeric column is never narrower than its widest value nor its header's
        longest word; a text column wraps at spaces down to ``least`` (longer words fold)."""
        plain = [Text.from_markup(c).plain for c in self.cells]
        values = max((max(Text(line).cell_len for line in p.split("\n")) for p in plain), default=0)
        head_word = max(len(w) for w in self.header.split())
        natural = max(values, len(self.header))
        if self.numeric:
            return max(values, head_word), natural
        return min(max(self.least, head_word), natural), natural


def _rows(result: FitResult, qname: str) -> dict[str, _Col]:
    cols = {
        name: _Col(name, numeric=name not in ("variant", "options", "feasible"))
        for name in ("variant", "options", "batch", "status", "p50 ms", "p99 ms", "n", "thr/s", "$/1M", "peak MB")
    }
    cols[qname] = _Col(qname)
    cols["feasible"] = _Col("feasible", numeric=False)
    for c in ("variant", "options", "status", "feasible"):
        cols[c].justify = "left"
    pareto = {p.candidate.id for p in result.pareto}
    for r in _shown(result):
        st = r.measurement.status
        feas = (
            "[green]yes[/]"
            if r.feasible
            else ("[red]" + ", ".join(_short(v.constraint) for v in r.violations) + "[/]" if r.measurement.ok else "–")
        )
        p50 = fmt(r.metric("p50_ms")) if st != "pruned" else f"[dim]~{fmt(r.metric('probe_p50_ms'))}[/]"
        values = {
            "variant": _breakable(r.candidate.pass_label()) + (" ◆" if r.candidate.id in pareto else ""),
            "options": f"{r.candidate.backend} {r.candidate.option_label()}",
            "batch": str(r.candidate.batch),
            "status": st if st in ("ok", "pruned") else f"[red]{st}[/]",
            "p50 ms": p50,
            "p99 ms": p99_text(r),
            "n": fmt(r.metric("samples")),
            "thr/s": fmt(r.metric("throughput"), 4),
            "$/1M": fmt(r.metric("usd_per_1m")),
            "peak MB": fmt(r.metric("peak_memory_mb")),
            qname: fmt(r.quality(), 4),
            "feasible": feas,
        }
        for name, col in cols.items():
            col.cells.append(values[name])
    cols["variant"].least = cols["variant"].longest_word()  # unmerged, names wrap only at spaces
    cols["options"].least = cols["options"].longest_word()
    cols["feasible"].least = max(8, cols["feasible"].longest_word())
    return cols


def _short(constraint: str) -> str:
    """A bound's name without its direction and unit, for the table: max_p99_ms → p99 (the near misses under
    the table name it in full)."""
    return re.sub(r"^(max|min)_|_(ms|mb)$", "", constraint)


def _breakable(label: str) -> str:
    """A pass chain that wraps between steps and parameters: 'int8_static(minmax, pc) + ort_graph_opt(all)'."""
    return label.replace("+", " + ").replace(",", ", ")


def p99_text(r: CandidateResult) -> str:
    """The p99, marked * when it comes from fewer than MIN_P99_SAMPLES samples."""
    return fmt(r.metric("p99_ms")) + ("*" if r.p99_reliable is False else "")


def _shown(result: FitResult) -> list[CandidateResult]:
    return [r for r in result.candidates if r.source != "skipped"]


# the layouts tried in turn, widest first: (variant and options merged, batch in the options, columns left out)
_LAYOUTS: tuple[tuple[bool, bool, tuple[str, ...]], ...] = (
    (False, False, ()),
    (True, False, ()),
    (True, True, ()),
    (True, True, ("n",)),
    (True, True, ("n", "$/1M")),
    (True, True, ("n", "$/1M", "peak MB")),
)


def _layout(cols: dict[str, _Col], merge: bool, batch_in_name: bool, hidden: tuple[str, ...]) -> list[_Col]:
    out = [c for name, c in cols.items() if name not in hidden]
    if merge:
        v, o, b = cols["variant"], cols["options"], cols["batch"]
        opts = [f"{x} · b{n}" if batch_in_name else x for x, n in zip(o.cells, b.cells, strict=True)]
        cells = [f"{x}\n  [dim]{y}[/]" for x, y in zip(v.cells, opts, strict=True)]
        merged = _Col("candidate", cells, False, "left", _CANDIDATE_MIN)
        out = [merged] + [c for c in out if c.header not in ("variant", "options", "batch" if batch_in_name else "")]
    return out


def _fit_widths(columns: list[_Col], width: int) -> list[int] | None:
    """Widths for ``columns`` within ``width`` characters, or None when even the narrowest do not fit."""
    avail = width - GAP * (len(columns) - 1)
    least = [c.widths()[0] for c in columns]
    natural = [c.widths()[1] for c in columns]
    spare = avail - sum(least)
    if spare < 0:
        return None
    widths = list(least)
    text = sorted((i for i, c in enumerate(columns) if not c.numeric), key=lambda i: natural[i])
    for i in text:  # first the text columns, narrowest first, up to their natural width
        grow = min(spare, natural[i] - widths[i])
        widths[i] += grow
        spare -= grow
    for i, c in enumerate(columns):  # then numeric headers on one line where the room allows
        if c.numeric and natural[i] - widths[i] <= spare:
            spare -= natural[i] - widths[i]
            widths[i] = natural[i]
    return widths


def fit_table(result: FitResult, width: int, qname: str) -> tuple[Table, list[str]]:
    """The candidates table for a terminal ``width`` characters wide, and the columns left out to fit it."""
    cols = _rows(result, qname)
    for merge, batch_in_name, hidden in _LAYOUTS:
        columns = _layout(cols, merge, batch_in_name, hidden)
        widths = _fit_widths(columns, width)
        if widths is not None:
            break
    else:  # narrower than any layout: the last one, its text columns folded to what the numbers leave
        for c in columns:
            c.least = min(c.least, _SQUEEZED)
        widths = _fit_widths(columns, width) or [c.widths()[0] for c in columns]
    table = Table(
        title=f"{len(result.candidates)} candidates",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for c, w in zip(columns, widths, strict=True):
        table.add_column(c.header, justify=c.justify, width=w, overflow="fold")  # type: ignore[arg-type]
    winner = result.winner.candidate.id if result.winner else None
    for i, r in enumerate(_shown(result)):
        style = "bold yellow" if r.candidate.id == winner else None
        table.add_row(*(c.cells[i] for c in columns), style=style)
    return table, list(hidden)
