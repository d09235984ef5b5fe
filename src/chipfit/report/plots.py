"""Plots for the report, rendered to inline SVG strings (no JavaScript, no network)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chipfit.result import FitResult

__all__ = ["batch_plot", "figure_svg", "pareto_plot"]


def figure_svg(fig: object) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    text = buf.getvalue()
    return text[text.find("<svg") :]


def pareto_plot(result: FitResult) -> str:
    """p50 latency vs quality for every measured candidate; Pareto front joined, winner starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.candidates if r.measurement.ok and r.metric("p50_ms") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    qname = "accuracy" if any(r.metric("accuracy") is not None for r in ok) else "fidelity"
    for feasible, color, label in ((True, "#2a9d8f", "feasible"), (False, "#e76f51", "violates a constraint")):
        sel = [r for r in ok if r.feasible == feasible and r.quality() is not None]
        if sel:
            xs = [float(r.metric("p50_ms")) for r in sel]
            ys = [float(r.quality() or 0.0) for r in sel]
            ax.scatter(xs, ys, s=28, c=color, label=label, alpha=0.8)
    front = sorted((r.metric("p50_ms"), r.quality()) for r in result.pareto if r.quality() is not None)
    if front:
        ax.plot(*zip(*front, strict=True), color="#264653", lw=1, ls="--", label="Pareto front")
    if result.winner and result.winner.quality() is not None:
        ax.scatter(
            [result.winner.metric("p50_ms")],
            [float(result.winner.quality() or 0.0)],
            marker="*",
            s=260,
            c="#f4a261",
            edgecolors="black",
            label="winner",
            zorder=5,
        )
    if result.spec.max_p50_ms:
        ax.axvline(result.spec.max_p50_ms, color="#e76f51", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel(qname)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure_svg(fig)


def batch_plot(result: FitResult) -> str:
    """Throughput and p99 per batch size for the winner's configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result.winner
    if w is None:
        return ""
    rows = sorted(
        (r for r in result.candidates if r.candidate.config_id == w.candidate.config_id and r.measurement.ok),
        key=lambda r: r.candidate.batch,
    )
    if len(rows) < 2:
        return ""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    b = [r.candidate.batch for r in rows]
    ax.plot(b, [r.metric("throughput") for r in rows], marker="o", color="#2a9d8f")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (samples/s)", color="#2a9d8f")
    ax2 = ax.twinx()
    ax2.plot(b, [r.metric("p99_ms") for r in rows], marker="s", color="#e76f51")
    ax2.set_ylabel("p99 (ms)", color="#e76f51")
    ax.grid(alpha=0.3)
    return figure_svg(fig)
