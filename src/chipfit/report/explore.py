"""The HTML report of ``chipfit explore``: learning curves, ASHA's rung decisions, dollars per trial, the
metric against latency with the bound's line, and the winner. Self-contained: inline SVG, no scripts."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from chipfit.report.plots import figure_svg

__all__ = ["rung_decisions", "write_explore_report"]

_COLORS = {
    "complete": "#1a7f37",
    "pruned": "#8c959f",
    "stopped": "#57606a",
    "rejected": "#cf222e",
    "fail": "#bf8700",
    "running": "#0969da",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_plot(history: list[dict[str, Any]], metric: str, winner: int | None) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for h in history:
        if not h["curve"]:
            continue
        xs, ys = zip(*h["curve"], strict=True)
        best = h["trial"] == winner
        ax.plot(
            xs,
            ys,
            color="#f4a261" if best else _COLORS.get(h["state"], "#57606a"),
            lw=2.5 if best else 0.9,
            alpha=1.0 if best else 0.6,
            marker="." if len(xs) < 3 else None,
        )
    ax.set_xscale("log")
    ax.set_xlabel("resource (steps / epochs), log")
    ax.set_ylabel(metric)
    ax.set_title("green = completed, grey = stopped by ASHA or the budget, red = rejected; orange = winner", fontsize=9)
    return figure_svg(fig)


def cost_plot(history: list[dict[str, Any]]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    hs = [h for h in history if h.get("charged_usd") is not None]
    ax.bar(
        [h["trial"] for h in hs], [h["charged_usd"] for h in hs], color=[_COLORS.get(h["state"], "#57606a") for h in hs]
    )
    ax.set_xlabel("trial")
    ax.set_ylabel("$ charged")
    return figure_svg(fig)


def latency_plot(history: list[dict[str, Any]], metric: str, max_p99_ms: float | None) -> str | None:
    pts = [h for h in history if (h.get("hardware") or {}).get("p99_ms") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for h in pts:
        y = h["value"] if h["value"] is not None else (max(v for _, v in h["curve"]) if h["curve"] else None)
        hw = h["hardware"]
        marker = "s" if hw["source"].startswith("measured") else "o"
        ax.scatter(
            [hw["p99_ms"]], [y if y is not None else 0.0], marker=marker, c=_COLORS.get(h["state"], "#57606a"), s=30
        )
    if max_p99_ms:
        ax.axvline(max_p99_ms, color="#cf222e", ls="--", lw=1)
        ax.text(max_p99_ms, ax.get_ylim()[1], " max p99", color="#cf222e", fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency on the target, ms (square = measured, circle = predicted)")
    ax.set_ylabel(f"{metric} (0 = rejected before training)")
    return figure_svg(fig)


def rung_decisions(history: list[dict[str, Any]], rungs: list[int]) -> list[dict[str, Any]]:
    """Per rung: trials that reached it, went on past it, and stopped there (ASHA, the budget, a rejection)."""
    out = []
    for k, r in enumerate(rungs):
        nxt = rungs[k + 1] if k + 1 < len(rungs) else None
        reached = [h for h in history if h["curve"] and h["curve"][-1][0] >= r]
        on = [h for h in reached if nxt is not None and h["curve"][-1][0] > r]
        stopped = [h for h in reached if h not in on and h["state"] != "complete"]
        out.append({"rung": k, "resource": r, "reached": len(reached), "promoted": len(on), "stopped": len(stopped)})
    return out


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def write_explore_report(result: Any, out: Path) -> Path:
    """``out/explore.html`` and ``out/explore.json`` (each written to a temporary name, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    metric = result.space.metric
    w = result.winner
    bound = summary.get("bound") or {}
    lat = latency_plot(result.history, metric, bound.get("max_p99_ms"))
    trials = [
        {**h, "p99 ms": (h.get("hardware") or {}).get("p99_ms"), "steps": h["curve"][-1][0] if h["curve"] else 0}
        for h in result.history
    ]
    win = (
        f"<p><b>Winner</b>: trial {w['trial']}, {html.escape(metric)} {w['value']:.4g}, "
        f"{html.escape(_fmt(w['params']))}"
        + (f"; {html.escape(w['hardware']['detail'])}" if w.get("hardware") else "")
        + (f"; artifact <code>{html.escape(summary['artifact'])}</code>" if summary.get("artifact") else "")
        + "</p>"
        if w
        else "<p>No trial completed.</p>"
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>chipfit explore</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #d0d7de;padding:3px 6px;text-align:right}}</style></head><body>
<h1>chipfit explore — {html.escape(result.space.path.name)}</h1>
<p>Spent {summary["spent"]:.4g} of {summary["budget"]:g} {html.escape(summary["unit"])}
(${summary["spent_usd"]:.4g}); stopped by {html.escape(summary["stopped_by"])}. Trials:
{html.escape(_fmt(summary["trials"]))}. Bound: {html.escape(json.dumps(bound) if bound else "none")}.</p>
{win}
<h2>Learning curves</h2>{curves_plot(result.history, metric, w["trial"] if w else None)}
<h2>Rung decisions (ASHA, η={result.space.reduction_factor})</h2>
{_table(rung_decisions(result.history, result.space.rungs), ["rung", "resource", "reached", "promoted", "stopped"])}
<h2>Dollars per trial</h2>{cost_plot(result.history)}
<h2>{html.escape(metric)} against latency</h2>{lat or "<p>No latency checks in this run (use --max-p99-ms).</p>"}
<h2>Trials</h2>
{
        _table(
            trials,
            ["trial", "state", "value", "steps", "p99 ms", "charged_s", "charged_usd", "threads", "params", "reason"],
        )
    }
</body></html>
"""
    data = {**summary, "history": result.history, "rungs": rung_decisions(result.history, result.space.rungs)}
    for name, text in (("explore.html", doc), ("explore.json", json.dumps(data, indent=2, default=str))):
        tmp = out / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out
