"""The HTML report of ``chipfit explore``: learning curves, ASHA's rung decisions, dollars per trial, the
metric against latency with the bound's line, and the winner. Self-contained: inline SVG, no scripts."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from chipfit.report.plots import figure_svg, fit_axis, subplots

__all__ = ["rung_decisions", "write_explore_report"]

_COLORS = {
    "complete": "#1a7f37",
    "pruned": "#8c959f",
    "stopped": "#57606a",
    "rejected": "#cf222e",
    "fail": "#bf8700",
    "running": "#0969da",
}


def curves_plot(history: list[dict[str, Any]], metric: str, winner: int | None) -> str:
    fig, ax = subplots()
    xs_all: list[float] = []
    ys_all: list[float] = []
    for h in history:
        if not h["curve"]:
            continue
        xs, ys = zip(*h["curve"], strict=True)
        xs_all += xs
        ys_all += [y for y in ys if y is not None]
        best = h["trial"] == winner
        ax.plot(
            xs,
            ys,
            color="#f4a261" if best else _COLORS.get(h["state"], "#57606a"),
            lw=2.5 if best else 0.9,
            alpha=1.0 if best else 0.6,
            marker="." if len(xs) < 3 else None,
        )
    log = fit_axis(ax, "x", xs_all, integer=True)
    fit_axis(ax, "y", ys_all, log=False)
    ax.set_xlabel("resource (steps / epochs" + (", log scale)" if log else ")"), fontsize=11)
    ax.set_ylabel(metric, fontsize=11)
    ax.set_title("green = completed, grey = stopped by ASHA or the budget, red = rejected; orange = winner", fontsize=9)
    return figure_svg(fig)


def cost_plot(history: list[dict[str, Any]]) -> str:
    fig, ax = subplots((8.0, 3.2))
    hs = [h for h in history if h.get("charged_usd") is not None]
    ax.bar(
        [h["trial"] for h in hs], [h["charged_usd"] for h in hs], color=[_COLORS.get(h["state"], "#57606a") for h in hs]
    )
    if hs:
        fit_axis(ax, "x", [h["trial"] for h in hs], log=False, integer=True)
        fit_axis(ax, "y", [0.0, *(h["charged_usd"] for h in hs)], log=False, margin=0.05)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("trial", fontsize=11)
    ax.set_ylabel("$ charged", fontsize=11)
    return figure_svg(fig)


def latency_plot(history: list[dict[str, Any]], metric: str, max_p99_ms: float | None) -> str | None:
    pts = [h for h in history if (h.get("hardware") or {}).get("p99_ms") is not None]
    if not pts:
        return None
    fig, ax = subplots()
    xs: list[float] = []
    ys: list[float] = []
    for h in pts:
        y = h["value"] if h["value"] is not None else (max(v for _, v in h["curve"]) if h["curve"] else None)
        hw = h["hardware"]
        xs.append(float(hw["p99_ms"]))
        ys.append(float(y if y is not None else 0.0))
        marker = "s" if hw["source"].startswith("measured") else "o"
        ax.scatter(
            [hw["p99_ms"]], [y if y is not None else 0.0], marker=marker, c=_COLORS.get(h["state"], "#57606a"), s=30
        )
    log = fit_axis(ax, "x", [*xs, *([max_p99_ms] if max_p99_ms else [])])
    fit_axis(ax, "y", ys, log=False)
    if max_p99_ms:
        ax.axvline(max_p99_ms, color="#cf222e", ls="--", lw=1)
        ax.text(max_p99_ms, ax.get_ylim()[1], " max p99", color="#cf222e", fontsize=9, va="top")
    scale = ", log scale" if log else ""
    ax.set_xlabel(f"p99 latency on the target (ms{scale}; square = measured, circle = predicted)", fontsize=11)
    ax.set_ylabel(f"{metric} (0 = rejected before training)", fontsize=11)
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


def _table(rows: list[dict[str, Any]], cols: list[str], compact: bool = False) -> str:
    head = "".join(f'<th class="{"l" if c in _TEXT_COLS else "n"}">{html.escape(c)}</th>' for c in cols)
    body = "".join("<tr>" + "".join(_cell(c, r.get(c)) for c in cols) + "</tr>" for r in rows)
    attr = ' style="width: auto"' if compact else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_TEXT_COLS = ("state", "params", "reason")


def _cell(col: str, v: Any) -> str:
    if col == "params" and isinstance(v, dict):  # one unbreakable item per parameter, wrapping between items
        items = " ".join(f'<span class="n">{html.escape(k)}={html.escape(_fmt(x))}</span>' for k, x in v.items())
        return f'<td class="l params">{items}</td>'
    return f'<td class="{"l" if col in _TEXT_COLS else "n"}">{html.escape(_fmt(v))}</td>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.2e}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _bound_text(bound: dict[str, Any]) -> str:
    """The hardware bound in words: "p99 ≤ 2 ms, memory ≤ 200 MB on local (measured)"."""
    if not bound:
        return "none"
    parts = []
    if bound.get("max_p99_ms") is not None:
        parts.append(f"p99 ≤ {_fmt(float(bound['max_p99_ms']))} ms")
    if bound.get("max_memory_mb") is not None:
        parts.append(f"memory ≤ {_fmt(float(bound['max_memory_mb']))} MB")
    where = f" on {bound.get('target')}" if bound.get("target") else ""
    how = " (measured)" if bound.get("measure") else " (predicted)"
    return (", ".join(parts) or "none") + where + how


_CSS = (Path(__file__).parent / "style.css.j2").read_text()  # report.html's style: the same headings, tables


def _summary(summary: dict[str, Any], w: dict[str, Any] | None, metric: str) -> str:
    unit = html.escape(summary["unit"])
    resumed = (
        f" The study was resumed: {summary['spent_before']:.4g} {unit} of that was spent by earlier runs."
        if summary.get("resumed")
        else ""
    )
    win = (
        f"<p><b>Winner:</b> trial {w['trial']} — {html.escape(metric)} {w['value']:.4g}; "
        + " ".join(f'<span class="n">{html.escape(k)}={html.escape(_fmt(x))}</span>' for k, x in w["params"].items())
        + (f"; {html.escape(w['hardware']['detail'])}" if w.get("hardware") else "")
        + (f"; artifact <code>{html.escape(summary['artifact'])}</code>" if summary.get("artifact") else "")
        + "</p>"
        if w
        else '<p class="bad">No trial completed.</p>'
    )
    return f"""<div class="box">{win}
<p>Spent {summary["spent"]:.4g} of {summary["budget"]:g} {unit} (${summary["spent_usd"]:.4g}); stopped by
{html.escape(summary["stopped_by"])}.{resumed} Trials: {html.escape(_fmt(summary["trials"]))}.
Hardware bound: {html.escape(_bound_text(summary.get("bound") or {}))}.</p></div>"""


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
    cols = ["trial", "state", "value", "steps", "p99 ms", "charged_s", "charged_usd", "threads", "params", "reason"]
    cols = [c for c in cols if c in ("trial", "state") or any(t.get(c) not in (None, "") for t in trials)]
    rung_cols = ["rung", "resource", "reached", "promoted", "stopped"]
    rungs = _table(rung_decisions(result.history, result.space.rungs), rung_cols, compact=True)
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in summary.get("notes") or [])
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chipfit explore — {html.escape(result.space.path.name)}</title>
<style>
{_CSS}</style></head><body>
<h1>chipfit explore report</h1>
<p class="muted">space {html.escape(result.space.path.name)} · metric {html.escape(metric)} ·
study {html.escape(str(summary.get("study") or ""))}</p>
{_summary(summary, w, metric)}
<h2>Learning curves</h2>{curves_plot(result.history, metric, w["trial"] if w else None)}
<h2>Rung decisions (ASHA, η = {result.space.reduction_factor})</h2>
{rungs}
<h2>Dollars per trial</h2>{cost_plot(result.history)}
<h2>{html.escape(metric.capitalize())} vs latency</h2>
{lat or '<p class="muted">No latency checks in this run (set a bound with --max-p99-ms).</p>'}
<h2>Trials ({len(trials)})</h2>
{_table(trials, cols)}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
    data = {**summary, "history": result.history, "rungs": rung_decisions(result.history, result.space.rungs)}
    for name, text in (("explore.html", doc), ("explore.json", json.dumps(data, indent=2, default=str))):
        tmp = out / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out
