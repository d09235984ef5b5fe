"""Terminal output for the CLI: progress on stderr, the result as tables on stdout (rich)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console

from chipfit.cli.fit_table import fit_table, fmt, p99_text
from chipfit.measure.stats import MIN_P99_SAMPLES
from chipfit.search.progress import line_progress, live_progress
from chipfit.search.select import quality_floor_text

if TYPE_CHECKING:
    from chipfit.pipeline import FitResult
    from chipfit.search.driver import Callback

__all__ = ["fit_progress", "print_fit_result"]


@contextmanager
def fit_progress(console: Console, enabled: bool = True) -> Iterator[Callback | None]:
    """The search's progress on ``console``: a live bar on a terminal, one line per finished candidate when it
    is not one (a log keeps every line, not the bar's last state)."""
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        yield line_progress(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        return
    with live_progress(console) as callback:
        yield callback


def _print_mixed_precision(console: Console, report: dict[str, Any] | None) -> None:
    if not report:
        return
    console.print(f"\n[bold]mixed precision[/] on {report['base']} (it missed: {report['bound']})")
    for step in report["steps"]:
        added = ", ".join(f"{n} ({e:.2g})" if e is not None else n for n, e in step["added"])
        cost = step["p50_cost_ms"]
        cost_s = f"{cost:+.3g} ms" if cost is not None else "–"
        console.print(
            f"  keep {step['kept_fp32']} in fp32 (+ {added}): {step['status']}, p50 {fmt(step['p50_ms'])} ms "
            f"({cost_s}), quality {fmt(step['quality'], 4)}{' [green]feasible[/]' if step['feasible'] else ''}",
            soft_wrap=True,
        )
    console.print(f"  → {report['outcome']}", soft_wrap=True)


def print_fit_result(console: Console, result: FitResult) -> None:
    qname = "accuracy" if result.reference and result.reference.metric("accuracy") is not None else "fidelity"
    table, hidden = fit_table(result, console.width, qname)
    console.print(table)
    if hidden:
        console.print(f"[dim]not shown at this width: {', '.join(hidden)} (in --json and report.html)[/]")
    if any(r.p99_reliable is False for r in result.candidates if r.source != "skipped"):
        console.print(
            f"[dim]p99* = from fewer than {MIN_P99_SAMPLES} samples (the time cap stopped the timing): not reliable[/]"
        )
    floor = quality_floor_text(result.spec)
    if floor and any(r.quality_floor is not None for r in result.candidates):
        console.print(f"[dim]{floor}[/]", soft_wrap=True)
    reasons = Counter(r.measurement.error for r in result.candidates if r.source == "skipped")
    for reason, n in reasons.most_common():
        console.print(f"[dim]{n} skipped: {reason}[/]", soft_wrap=True)
    pruned = [r for r in result.candidates if r.measurement.status == "pruned"]
    if pruned:
        console.print(
            f"[dim]{len(pruned)} pruned by a short latency probe (~ = probe median): slower than the best feasible "
            "candidate, so not measured further[/]"
        )
    _print_mixed_precision(console, result.mixed_precision)
    failed = [r for r in result.candidates if r.measurement.status in ("failed", "timeout", "oom")]
    for r in failed:
        console.print(f"[red]{r.measurement.status}[/] {r.candidate.label()}: {r.measurement.error}", soft_wrap=True)
    console.print("[dim]◆ = on the Pareto front (p50 latency, quality, memory)[/]")
    if result.winner:
        w = result.winner
        ref = result.reference
        speed = ""
        if ref and ref.metric("p50_ms") and w.candidate.id != ref.candidate.id:
            speed = (
                f"\n  (the backend's default session, measured in its own worker: p50 {fmt(ref.metric('p50_ms'))} ms)"
            )
        console.print(
            f"\n[bold green]winner[/] ({result.spec.objective}): {w.candidate.label()}\n"
            f"  p50 {fmt(w.metric('p50_ms'))} ms · p99 {p99_text(w)} ms · "
            f"{fmt(w.metric('throughput'), 4)}/s · "
            f"peak {fmt(w.metric('peak_memory_mb'))} MB · {qname} {fmt(w.quality(), 4)}{speed}\n"
            f"  ${fmt(w.metric('usd_per_1m'))} per 1M inferences on {w.metric('cost_target') or 'this machine'} · "
            f"{fmt(w.metric('energy_mj'))} mJ per inference ({w.metric('energy_method') or 'not known'})"
        )
        for caveat in w.caveats:
            console.print(f"[yellow]  caution:[/] {caveat}", soft_wrap=True)
        local = _local_note()
        if local:
            console.print(f"[dim]  {local}[/]", soft_wrap=True)
    else:
        console.print("\n[bold red]no candidate meets every constraint.[/] Nearest misses:")
        for r in result.near_misses:
            console.print(f"  {r.candidate.label()}: " + "; ".join(v.describe() for v in r.violations), soft_wrap=True)
    if result.out_dir:
        console.print(
            f"artifact: {result.out_dir}/ (manifest.json, results.jsonl, report.html"
            + (", model)" if result.winner else ")")
        )


def _local_note() -> str:
    """How this machine's price and power were found (a catalogue match or an estimate)."""
    from chipfit.hardware.local import local_target

    target, info = local_target(measure=False)
    return f"cost on this machine: ${target.usd_per_hour:.4g}/h ({target.price.get('basis', '')}); {info['how']}"
