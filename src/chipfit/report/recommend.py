"""The HTML (and JSON) of ``chipfit recommend``: the ranked targets, and cost against p99 latency with the
predicted points' expected error drawn as bars and the SLA line. Self-contained: inline SVG, no scripts."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from chipfit.report.plots import figure_svg

__all__ = ["cost_latency_plot", "write_recommendation"]


def cost_latency_plot(targets: list[dict[str, Any]], max_p99_ms: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
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
        ax.annotate(t["name"], (t["p99_ms"], t["usd_per_1m"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if max_p99_ms:
        ax.axvline(max_p99_ms, color="#cf222e", ls="--", lw=1)
        ax.text(max_p99_ms, ax.get_ylim()[1], " max p99", color="#cf222e", fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 latency, ms (predicted: bars = expected error)")
    ax.set_ylabel("$ per 1M inferences")
    ax.set_title("square = measured here, circle = predicted; red = misses a bound", fontsize=9)
    return figure_svg(fig)


def _table(targets: list[dict[str, Any]]) -> str:
    cols = ("target", "backend", "variant", "batch", "p50 ms", "p99 ms", "thr/s", "instances", "$/1M", "mJ")
    head = "".join(f"<th>{c}</th>" for c in (*cols, "meets", "source", "basis"))
    rows = []
    for t in targets:
        src = "measured" if t["source"] == "measured" else f"predicted (±{t['expected_error']:.0%})"
        cells = (
            t["name"],
            t["backend"],
            t["variant"],
            t["batch"],
            f"{t['p50_ms']:.4g}",
            f"{t['p99_ms']:.4g}",
            f"{t['throughput']:.4g}",
            t["instances"],
            f"{t['usd_per_1m']:.4g}",
            f"{t['energy_mj']:.3g}",
            "yes" if t["meets"] else "no: " + ", ".join(t["violations"] or ["memory"]),
            src,
            t.get("basis", ""),
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_recommendation(rec: Any, out: Path) -> Path:
    """``out/recommend.html`` and ``out/recommend.json``, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    p = rec.predictor
    pred = (
        f"Predictor held-out on this machine: {p['within_10pct']:.0%} within ±10%, median error {p['median_ape']:.1%} "
        f"over {p['n']} measurements of {p['models']} models."
        if p.get("n")
        else "Too few measured models for a held-out predictor error."
    )
    bounds = {k: v for k, v in rec.spec.items() if v is not None and k.startswith(("max", "min"))}
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>chipfit recommend</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #d0d7de;padding:3px 6px;text-align:right}}td:nth-child(-n+3){{text-align:left}}</style>
</head><body><h1>Which hardware fits best</h1>
<p>Ranked by <b>{html.escape(rec.objective)}</b>. Constraints: {html.escape(json.dumps(bounds))}.
The first measured row is this machine; every other row is predicted. {html.escape(pred)} Predictions for other
targets apply this machine's calibration to their roofline and are not validated there.</p>
{cost_latency_plot(rec.targets, rec.spec.get("max_p99_ms"))}
{_table(rec.targets)}
</body></html>
"""
    for name, text in (("recommend.html", doc), ("recommend.json", json.dumps(rec.to_dict(), indent=2, default=str))):
        tmp = out / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out
