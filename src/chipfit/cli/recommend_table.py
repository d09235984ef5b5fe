"""The ``recommend`` table, laid out for the terminal's width: every number whole from 80 columns up. Numeric
columns are exactly as wide as their widest value and never wrap; the target name and the source wrap. Where
the row is still too wide, the least needed columns are left out, in a fixed order (said in a note under the
table; ``--json`` and recommend.html hold every value)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from chipfit.cli.fit_table import fmt

__all__ = ["recommend_table", "source_label"]

GAP = 2  # characters between two columns (box.SIMPLE_HEAD, collapsed padding)
_DROP = ("mJ", "thr/s", "inst.", "p50 ms", "backend", "variant")  # left out first when the width runs short
_TEXT = ("target", "backend", "variant", "meets", "source")
_WRAP_MIN = {"target": 12, "meets": 10, "source": 9}  # columns that may wrap, and how narrow they may get
# which columns wrap, tried in order (each with every step of _DROP): none, then the source and the bounds
# missed (at spaces and commas), at last the target's name
_WRAPS: tuple[tuple[str, ...], ...] = ((), ("source", "meets"), ("source", "meets", "target"))


def source_label(t: dict[str, Any]) -> str:
    """'measured', 'declared' (measured on a farm node that only declared its target), 'predicted ±12%' (held-out
    median error) or 'predicted ±?' (no held-out evaluation)."""
    if t["source"] in ("measured", "declared"):
        return str(t["source"])
    err = t["expected_error"]
    label = f"predicted ±{err:.0%}" if err < 10 else "predicted ±?"
    return label + (" clamped" if t.get("clamped") else "")


def _columns(targets: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        "#": [str(i) for i in range(1, len(targets) + 1)],
        "target": [t["name"] for t in targets],
        "backend": [t["backend"] for t in targets],
        "variant": [t["variant"] for t in targets],
        "batch": [str(t["batch"]) for t in targets],
        "p50 ms": [fmt(float(t["p50_ms"]), 4) for t in targets],
        "p99 ms": [fmt(float(t["p99_ms"]), 4) for t in targets],
        "thr/s": [fmt(float(t["throughput"]), 4) for t in targets],
        "inst.": [str(t["instances"]) for t in targets],
        "$/1M": [fmt(float(t["usd_per_1m"]), 4) for t in targets],
        "mJ": [fmt(float(t["energy_mj"]), 3) for t in targets],
        "meets": ["yes" if t["meets"] else ",".join(t["violations"]) or "memory" for t in targets],
        "source": [source_label(t) for t in targets],
    }


def _width(name: str, values: list[str], wrap: tuple[str, ...]) -> int:
    full = max([len(name), *(len(v) for v in values)])
    return min(full, _WRAP_MIN[name]) if name in wrap else full


def _layout(cols: dict[str, list[str]], width: int) -> tuple[list[str], tuple[str, ...]]:
    """The columns left out and the columns that wrap: the fewest left out without wrapping, else with the
    source and bounds wrapping, else with the names wrapping too."""
    for wrap in _WRAPS:
        for n in range(len(_DROP) + 1):
            shown = {k: v for k, v in cols.items() if k not in _DROP[:n]}
            if sum(_width(k, v, wrap) for k, v in shown.items()) + GAP * (len(shown) - 1) <= width:
                return list(_DROP[:n]), wrap
    return list(_DROP), _WRAPS[-1]


def recommend_table(targets: list[dict[str, Any]], objective: str, width: int) -> tuple[Table, list[str]]:
    """The ranked targets as a table no wider than ``width``, and the names of the columns left out."""
    cols = _columns(targets)
    hidden, wrap = _layout(cols, width)
    shown = {k: v for k, v in cols.items() if k not in hidden}
    table = Table(
        title=f"targets ranked by {objective}",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name, values in shown.items():
        numeric = name not in _TEXT
        full = max([len(name), *(len(v) for v in values)])
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=name not in wrap,
            min_width=min(full, _WRAP_MIN[name]) if name in wrap else full,
            overflow="fold",
        )
    for i, t in enumerate(targets):
        cells = [v[i] for v in shown.values()]
        if "meets" in shown:
            k = list(shown).index("meets")
            cells[k] = f"[green]{cells[k]}[/]" if t["meets"] else f"[red]{cells[k]}[/]"
        table.add_row(*cells, style="bold" if t["source"] == "measured" else None)
    return table, hidden
