"""The job page's plots, rendered server-side to inline SVG with the report's helpers (chipfit.report.plots):
latency against quality with the feasible region shaded, and for a recommendation the report's cost/latency
plot. Inputs are the job's result JSON as the dashboard's views hold it (dicts), never live objects."""

from __future__ import annotations

import math
from typing import Any

from chipfit.report.plots import figure_svg, fit_axis, plain_number, subplots
from chipfit.server.dashboard_views import quality_of

__all__ = ["latency_axis", "pareto_svg", "recommend_svg"]

FEASIBLE = "#2a9d8f"
INFEASIBLE = "#e76f51"
MEASURED = "#3b82f6"


def latency_axis(bounds: dict[str, float]) -> str:
    """The latency the plot's x axis shows: p99 when the spec bounds p99 (and not p50), else p50."""
    return "p99_ms" if "max_p99_ms" in bounds and "max_p50_ms" not in bounds else "p50_ms"


def _quality_floor(section: dict[str, Any], qname: str | None) -> float | None:
    """The lowest quality the spec allows on the plot's y axis: the reference's accuracy minus the allowed drop,
    or the minimum fidelity (when the axis shows fidelity)."""
    bounds = section["bounds"]
    ref_name, ref_q = quality_of(section.get("reference") or {})
    if "max_accuracy_drop" in bounds and ref_q is not None and ref_name == qname:
        return ref_q - bounds["max_accuracy_drop"]
    if "min_fidelity" in bounds and qname is not None and "accuracy" not in qname and qname != ref_name:
        return bounds["min_fidelity"]
    return None


def pareto_svg(section: dict[str, Any]) -> str:
    """Latency against quality for every measured candidate of one target: feasible ones green, the others
    orange, the Pareto front dashed, the winner starred, and the region the spec's latency and quality bounds
    allow shaded. Empty string when no candidate has both a latency and a quality."""
    x_key = latency_axis(section["bounds"])
    points = []
    for c in section["candidates"]:
        qname, q = quality_of(c)
        x = c.get(x_key)
        if c.get("status") == "ok" and q is not None and isinstance(x, (int, float)) and math.isfinite(x):
            points.append((float(x), q, bool(c.get("feasible")), str(c.get("id")), qname))
    if not points:
        return ""
    qname = points[0][4]
    fig, ax = subplots()
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_bound = section["bounds"].get("max_" + x_key)
    y_floor = _quality_floor(section, qname)
    near = x_bound is not None and min(xs) / 3 <= x_bound <= max(xs) * 3  # a far bound would squash the points
    log = fit_axis(ax, "x", [*xs, x_bound] if near and x_bound is not None else xs)
    ys_axis = [*ys, y_floor] if y_floor is not None and min(ys) - 0.2 <= y_floor else ys
    fit_axis(ax, "y", ys_axis, log=False)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    right = x1 if x_bound is None else max(x0, min(x_bound, x1))  # a bound left of the plot: nothing is feasible
    bottom = y0 if y_floor is None else min(y1, max(y_floor, y0))
    label = "feasible region (" + _region_text(x_key, x_bound, qname, y_floor) + ")"
    if right > x0 and bottom < y1:
        ax.fill_between([x0, right], bottom, y1, color=FEASIBLE, alpha=0.09, lw=0, label=label, zorder=0)
    else:
        ax.plot([], [], " ", label=label.replace("feasible region", "no feasible region"))
    if x_bound is not None and x0 < x_bound < x1:
        ax.axvline(x_bound, color=INFEASIBLE, lw=1, ls=":")
    if y_floor is not None and y0 < y_floor < y1:
        ax.axhline(y_floor, color=INFEASIBLE, lw=1, ls=":")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    groups: tuple[tuple[bool, str, str], ...] = (
        (True, FEASIBLE, "feasible"),
        (False, INFEASIBLE, "violates a constraint"),
    )
    if section.get("partial"):  # a running job: the constraints are checked when it ends
        groups = ((True, MEASURED, "measured so far (verdict when the job ends)"),)
        points = [(x, y, True, i, q) for x, y, _, i, q in points]
    for feasible, color, name in groups:
        sel = [p for p in points if p[2] == feasible]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=36, c=color, alpha=0.85, label=name, zorder=3)
    front = sorted((p[0], p[1]) for p in points if p[3] in section["pareto_ids"])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="#264653", lw=1, ls="--", label="Pareto front", zorder=2)
    w = section.get("winner")
    win = [p for p in points if w and p[3] == str(w.get("id"))]
    if win:
        ax.scatter(
            [win[0][0]], [win[0][1]], marker="*", s=300, c="#f4a261", edgecolors="black", label="winner", zorder=5
        )
    ax.set_xlabel(f"{x_key[:3]} latency (ms" + (", log scale)" if log else ")"), fontsize=11)
    ax.set_ylabel(qname or "quality", fontsize=11)
    ax.legend(fontsize=9, loc="lower right")
    return figure_svg(fig)


def _region_text(x_key: str, x_bound: float | None, qname: str | None, y_floor: float | None) -> str:
    parts = []
    if x_bound is not None:
        parts.append(f"{x_key[:3]} ≤ {plain_number(x_bound)} ms")
    if y_floor is not None:
        parts.append(f"{qname} ≥ {plain_number(y_floor)}")
    return ", ".join(parts) if parts else "no latency or quality bound"


def recommend_svg(targets: list[dict[str, Any]], max_p99_ms: float | None) -> str:
    """The recommendation report's cost against p99 plot (measured squares, predicted circles with their expected
    error), for the targets that have both numbers."""
    from chipfit.report.recommend import cost_latency_plot

    rows = []
    for t in targets:
        if not (t.get("p99_ms") and t.get("usd_per_1m")):
            continue
        err = t.get("expected_error")
        rows.append({**t, "expected_error": float(err) if isinstance(err, (int, float)) else math.inf})
    return cost_latency_plot(rows, max_p99_ms) if rows else ""
