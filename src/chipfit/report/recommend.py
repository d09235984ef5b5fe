"""The HTML (and JSON) of ``chipfit recommend``: the ranked targets, and cost against p99 latency with the
predicted points' expected error drawn as bars and the SLA line. Self-contained: inline SVG, no scripts.

What the predictions rest on is said once above the table; each row carries a short tag (and says when it was
clamped to this machine's measurement). Point labels in the plot are placed so that they do not overlap."""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chipfit.report.plots import compact_number, figure_svg

__all__ = ["constraints_table", "cost_latency_plot", "place_labels", "write_recommendation"]

# label offsets (points) tried in order around a marker: right, above, below, left; then columns further out to
# the right and left, stepping up and down, so that a dense cluster fans out with leader lines
_PAD = 2  # pixels kept free around a label (a browser's font may be a little wider than matplotlib's)
_NEAR = [(5, 3), (5, -10), (-5, 3), (-5, -10), (0, 9), (0, -16)]
_OFFSETS = _NEAR + [
    (dx, dy) for dx in (30, -30, 70, -70) for k in range(0, 16) for dy in ((k * 11, -k * 11 - 11) if k else (0, -11))
]


def place_labels(
    ax: Any,
    points: list[tuple[float, float, str]],
    fontsize: float = 7,
    bars: Sequence[tuple[float, float, float]] = (),
) -> list[Any]:
    """Annotate ``points`` (x, y, label) so that no two labels (nor a label and a marker) overlap: each label
    takes the first offset whose box is free and inside the axes, tried from the nearest out; a label placed
    away from its point gets a thin leader line. Returns the annotations."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()  # fixes the axes' limits and gives the renderer
    renderer = fig.canvas.get_renderer()
    marker_boxes = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        marker_boxes.append((px - 4, py - 4, px + 4, py + 4))
    for x0, x1, y in bars:
        (ax0, ay), (ax1, _) = ax.transData.transform([(x0, y), (x1, y)])
        marker_boxes.append((ax0, ay - 2, ax1, ay + 2))
    frame = ax.get_window_extent(renderer)
    taken: list[tuple[float, float, float, float]] = []
    placed = []
    for x, y, label in sorted(points, key=lambda p: (-p[1], p[0])):
        for i, (dx, dy) in enumerate(_OFFSETS):
            far = i >= len(_NEAR)
            ann = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx >= 0 else "right",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#8c959f"} if far else None,
            )
            ann.update_positions(renderer)
            e = Text.get_window_extent(ann, renderer)  # the label's text, not its leader line
            box = (e.x0 - _PAD, e.y0 - _PAD, e.x1 + _PAD, e.y1 + _PAD)
            inside = frame.x0 <= e.x0 and e.x1 <= frame.x1 and frame.y0 <= e.y0 and e.y1 <= frame.y1
            clash = not inside or any(_overlap(box, b) for b in taken + marker_boxes)
            if not clash or i == len(_OFFSETS) - 1:
                taken.append(box)
                placed.append(ann)
                break
            ann.remove()
    return placed


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def cost_latency_plot(targets: list[dict[str, Any]], max_p99_ms: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    for t in targets:
        err = t["expected_error"] if t["expected_error"] < 10 else 0.0
        measured = t["source"] == "measured"
        ax.errorbar(
            t["p99_ms"],
            t["usd_per_1m"],
            xerr=[[t["p99_ms"] * err / (1 + err)], [t["p99_ms"] * err]] if err else None,
            fmt="s" if measured else "o",
            color=("#1a7f37" if measured else "#0969da") if t["meets"] else "#cf222e",
            ms=7 if measured else 5,
            capsize=2,
        )
    from chipfit.report.plots import fit_axis

    # plain decimals on both log axes (0.02, 0.00001), never 2×10⁻² or 1e-05; the x range covers the error bars
    xs = [t["p99_ms"] for t in targets if t["p99_ms"]]
    errs = [t["expected_error"] if t["expected_error"] < 10 else 0.0 for t in targets if t["p99_ms"]]
    xspan = [x / (1 + e) for x, e in zip(xs, errs, strict=True)] + [x * (1 + e) for x, e in zip(xs, errs, strict=True)]
    fit_axis(ax, "x", xspan + ([max_p99_ms] if max_p99_ms else []), log=True)
    fit_axis(ax, "y", [t["usd_per_1m"] for t in targets if t["usd_per_1m"]], log=True)
    if max_p99_ms:
        ax.axvline(max_p99_ms, color="#cf222e", ls="--", lw=1)
        ax.text(max_p99_ms, ax.get_ylim()[1], " max p99", color="#cf222e", fontsize=8, va="top")
    ax.set_xlabel("p99 latency, ms (predicted: bars = expected error)")
    ax.set_ylabel("$ per 1M inferences")
    ax.set_title("square = measured here, circle = predicted; red = misses a bound", fontsize=9)
    bars = []
    for t in targets:
        err = t["expected_error"] if t["source"] != "measured" and t["expected_error"] < 10 else 0.0
        if err:
            bars.append((t["p99_ms"] / (1 + err), t["p99_ms"] * (1 + err), t["usd_per_1m"]))
    place_labels(ax, [(t["p99_ms"], t["usd_per_1m"], t["name"]) for t in targets], bars=bars)
    return figure_svg(fig)


def constraints_table(spec: dict[str, Any]) -> str:
    """The bounds given (and ``min_throughput``, served by as many instances as needed) as a small table."""
    from chipfit.spec import CONSTRAINTS

    rows = []
    for key, value in spec.items():
        if value is None or not key.startswith(("max_", "min_")) or key not in CONSTRAINTS:
            continue
        c = CONSTRAINTS[key]
        what = f"{c.metric} {'≤' if c.kind == 'max' else '≥'}"
        note = "in total: instances per target follow" if key == "min_throughput" else ""
        cells = (key, what, f"{value:g}" if isinstance(value, int | float) else str(value), c.unit, note)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    if not rows:
        return "<p>No bounds given: every target meets them; ranked by the objective only.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("constraint", "bound", "value", "unit", "note"))
    return f'<table class="bounds"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _num(v: float, digits: int = 4) -> str:
    """Few characters: 52790 (not 5.279e+04), 4.98e-7 (not 4.983e-07)."""
    return compact_number(float(v), digits)


def _source(t: dict[str, Any]) -> str:
    if t["source"] in ("measured", "declared"):  # 'declared': on a farm node that only declared its target
        return str(t["source"])
    err = t["expected_error"]
    return f"predicted ±{err:.0%}" if err < 10 else "predicted, ±?"


def _table(targets: list[dict[str, Any]]) -> str:
    cols = ("#", "target", "backend", "variant", "batch", "p50 ms", "p99 ms", "thr/s", "inst.", "$/1M", "mJ")
    head = "".join(f"<th>{c}</th>" for c in (*cols, "meets", "source", "basis"))
    rows = []
    for i, t in enumerate(targets, 1):
        cells = (
            i,
            t["name"],
            t["backend"],
            t["variant"],
            t["batch"],
            _num(t["p50_ms"]),
            _num(t["p99_ms"]),
            _num(t["throughput"]),
            t["instances"],
            _num(t["usd_per_1m"]),
            _num(t["energy_mj"], 3),
            "yes" if t["meets"] else "no: " + ", ".join(t["violations"] or ["memory"]),
        )
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        tds += f'<td title="{html.escape(t.get("error_basis", ""))}">{html.escape(_source(t))}</td>'
        tag = html.escape(t.get("basis", ""))
        if t.get("clamped"):  # the tag's "clamped" says why on hover
            why = f'<span class="clamp" title="{html.escape(t["clamped"])}">clamped</span>'
            tag = tag.replace("clamped", why) if "clamped" in tag else f"{tag} {why}"
        style = ' class="here"' if t["source"] == "measured" else ""
        rows.append(f"<tr{style}>{tds}<td>{tag}</td></tr>")
    return f'<table class="targets"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def header(rec: Any) -> str:
    """What the page shows and what it rests on, computed from the rows: said once, above the table."""
    here = [i for i, t in enumerate(rec.targets, 1) if t["source"] == "measured" and not t.get("node")]  # not a farm's
    b = rec.basis
    machine = html.escape(re.sub(r" with ISA \[[^\]]*\]", "", b.get("this_machine", "")))
    where = (
        f"Row {here[0]} (<b>local</b>, bold) is measured here, on {machine}."
        if here
        else "No candidate ran successfully here, so no row is measured."
    )
    n_clamped = sum(1 for t in rec.targets if t.get("clamped"))
    clamped = f" {n_clamped} row(s) were clamped." if n_clamped else ""
    return f"""<p>Ranked by <b>{html.escape(rec.objective)}</b> among the targets meeting every bound.</p>
{constraints_table(rec.spec)}
<ul class="basis"><li>{where} Every other row is predicted.</li>
<li>Predicted: {html.escape(b.get("predicted", ""))}.</li>
<li>Error bars (± in the source column): {html.escape(b.get("error", ""))}.</li>
<li>Sanity rule: {html.escape(b.get("clamp", ""))}.{clamped}</li></ul>"""


def write_recommendation(rec: Any, out: Path) -> Path:
    """``out/recommend.html`` and ``out/recommend.json``, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>chipfit recommend</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;line-height:1.4}}
table{{border-collapse:collapse;font-size:12px;margin:0.8em 0}}
td,th{{border:1px solid #d0d7de;padding:2px 5px;text-align:right;white-space:nowrap}}
table.targets td:nth-child(n+2):nth-child(-n+4),table.targets td:nth-child(n+13),table.bounds td{{text-align:left}}
tr.here{{font-weight:bold}}.clamp{{color:#9a6700}}ul.basis{{font-size:14px;color:#424a53}}</style>
</head><body><h1>Which hardware fits best</h1>
{header(rec)}
{cost_latency_plot(rec.targets, rec.spec.get("max_p99_ms"))}
{_table(rec.targets)}
</body></html>
"""
    for name, text in (("recommend.html", doc), ("recommend.json", json.dumps(rec.to_dict(), indent=2, default=str))):
        tmp = out / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out
