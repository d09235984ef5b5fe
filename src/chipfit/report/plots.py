"""Plots for the report, rendered to inline SVG strings (no JavaScript, no network).

Every plot is sized to read at the page's width (8 × 4.5 in), labels its ticks with plain decimals (no 2⁰ or
10⁻² forms), and fits its axes to the data with a small margin. Text stays text in the SVG (smaller, selectable).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chipfit.result import FitResult

__all__ = [
    "FIGSIZE",
    "batch_plot",
    "compact_number",
    "figure_svg",
    "fit_axis",
    "pareto_plot",
    "plain_number",
    "subplots",
]

FIGSIZE = (8.0, 4.5)  # inches: ~770 px wide in the page, labels at 10 pt read without zooming


def compact_number(v: float, digits: int = 3) -> str:
    """A table cell's number in few characters: ``digits`` significant digits, large values as integers (75500,
    not 7.55e+04), exponents without padding (3.1e-7, not 3.1e-07)."""
    if 10**digits <= abs(v) < 1e7:
        return f"{v:.0f}"
    text = f"{v:.{digits}g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def plain_number(v: float) -> str:
    """A tick label as a plain decimal: 0.0159, 2, 1000 (never 1e-05, 2⁰ or 10⁻²)."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    digits = max(0, 3 - math.floor(math.log10(abs(v))))
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def subplots(figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Any]:
    """A figure and axes with the report's type sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def fit_axis(
    ax: Any,
    axis: str,
    values: Sequence[float],
    log: bool | None = None,
    margin: float = 0.08,
    integer: bool = False,
) -> bool:
    """Fit one axis ("x" or "y") to ``values`` with a small margin and plain tick labels. ``log`` None: a log
    scale when the values span more than a factor of 8; ``integer``: whole-number ticks only (trials, epochs).
    Returns whether the axis is logarithmic."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return False
    lo, hi = min(vals), max(vals)
    if log is None:
        log = lo > 0 and hi / lo > 8
    axis_obj = ax.xaxis if axis == "x" else ax.yaxis
    set_lim = ax.set_xlim if axis == "x" else ax.set_ylim
    if log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        f = (hi / lo) ** margin if hi > lo else 1.15
        set_lim(lo / f, hi * f)
        axis_obj.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis_obj.set_minor_formatter(NullFormatter())
    else:
        span = hi - lo
        pad = span * margin if span > 0 else max(abs(hi) * 0.005, 1e-6)
        if integer:
            pad = max(pad, 0.5)
        set_lim(lo - pad, hi + pad)
        axis_obj.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10], integer=integer))
    axis_obj.set_major_formatter(FuncFormatter(lambda v, _pos: plain_number(v)))
    return bool(log)


def figure_svg(fig: object) -> str:
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    text = buf.getvalue()
    return text[text.find("<svg") :]


def pareto_plot(result: FitResult) -> str:
    """p50 latency vs quality for every measured candidate; Pareto front joined, winner starred."""
    ok = [r for r in result.candidates if r.measurement.ok and r.metric("p50_ms") is not None]
    ok = [r for r in ok if r.quality() is not None]
    fig, ax = subplots()
    qname = "accuracy" if any(r.metric("accuracy") is not None for r in ok) else "fidelity"
    for feasible, color, label in ((True, "#2a9d8f", "feasible"), (False, "#e76f51", "violates a constraint")):
        sel = [r for r in ok if r.feasible == feasible]
        if sel:
            xs = [float(r.metric("p50_ms")) for r in sel]
            ys = [float(r.quality() or 0.0) for r in sel]
            ax.scatter(xs, ys, s=36, c=color, label=label, alpha=0.8)
    front = sorted((r.metric("p50_ms"), r.quality()) for r in result.pareto if r.quality() is not None)
    if front:
        ax.plot(*zip(*front, strict=True), color="#264653", lw=1, ls="--", label="Pareto front")
    if result.winner and result.winner.quality() is not None:
        ax.scatter(
            [result.winner.metric("p50_ms")],
            [float(result.winner.quality() or 0.0)],
            marker="*",
            s=300,
            c="#f4a261",
            edgecolors="black",
            label="winner",
            zorder=5,
        )
    xs = [float(r.metric("p50_ms")) for r in ok]
    bound = result.spec.max_p50_ms
    if bound and xs and min(xs) / 3 <= bound <= max(xs) * 3:  # a bound far off the data would squash it
        xs.append(bound)
        ax.axvline(bound, color="#e76f51", lw=1, ls=":", label=f"max p50 {plain_number(bound)} ms")
    log = fit_axis(ax, "x", xs)
    fit_axis(ax, "y", [float(r.quality() or 0.0) for r in ok], log=False)
    ax.set_xlabel("p50 latency (ms" + (", log scale)" if log else ")"), fontsize=11)
    ax.set_ylabel(qname, fontsize=11)
    if ok:
        ax.legend(fontsize=9, loc="best")
    return figure_svg(fig)


def batch_plot(result: FitResult) -> str:
    """Throughput and p99 per batch size for the winner's configuration."""
    from matplotlib.ticker import FixedLocator, NullLocator

    w = result.winner
    if w is None:
        return ""
    rows = sorted(
        (r for r in result.candidates if r.candidate.config_id == w.candidate.config_id and r.measurement.ok),
        key=lambda r: r.candidate.batch,
    )
    if len(rows) < 2:
        return ""
    fig, ax = subplots()
    b = [r.candidate.batch for r in rows]
    tput = [float(r.metric("throughput") or 0.0) for r in rows]
    p99 = [float(r.metric("p99_ms") or 0.0) for r in rows]
    ax.plot(b, tput, marker="o", color="#2a9d8f", label="throughput")
    fit_axis(ax, "x", b, log=max(b) / min(b) > 8)
    ax.xaxis.set_major_locator(FixedLocator(b))  # one tick per measured batch size, labelled 1, 2, 4, …
    ax.xaxis.set_minor_locator(NullLocator())
    fit_axis(ax, "y", tput, log=False)
    ax.set_xlabel("batch size", fontsize=11)
    ax.set_ylabel("throughput (samples/s)", color="#2a9d8f", fontsize=11)
    ax2 = ax.twinx()
    ax2.tick_params(labelsize=10)
    ax2.plot(b, p99, marker="s", color="#e76f51", label="p99")
    fit_axis(ax2, "y", p99, log=False)
    ax2.set_ylabel("p99 (ms)", color="#e76f51", fontsize=11)
    return figure_svg(fig)
