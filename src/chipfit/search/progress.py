"""How a fit shows its progress: a live bar on a terminal, one line per finished candidate elsewhere (a log, a
pipe, a notebook's captured stderr), or a function of the caller's given each finished candidate. The CLI and
``chipfit.fit`` share these."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from chipfit.search.driver import Callback
    from chipfit.search.select import CandidateResult

__all__ = ["ProgressOption", "candidate_line", "line_progress", "live_progress", "progress_callback"]

# what ``fit(progress=...)`` takes: None (the default display, unless a low-level callback is given), True (the
# default display), False (none), or a function called with each finished candidate's result
ProgressOption = bool | Callable[["CandidateResult"], Any] | None


def candidate_line(r: CandidateResult, index: int, total: int, seconds: float | None = None) -> str:
    """One finished candidate as one line: '[3/12] ort_graph_opt(all) · onnxruntime 1t seq · b1: ok, p50
    0.0119 ms, accuracy 0.98 (measured in 2.1s)'."""
    m = r.measurement
    parts = [m.status]
    p50 = r.metric("p50_ms") if m.status != "pruned" else r.metric("probe_p50_ms")
    if p50 is not None:
        parts.append(f"p50 {'~' if m.status == 'pruned' else ''}{p50:.3g} ms")
    quality = r.quality()
    if quality is not None:
        parts.append(f"{'accuracy' if r.metric('accuracy') is not None else 'fidelity'} {quality:.4g}")
    if m.error and not m.ok and m.status != "pruned":
        parts.append(" ".join(m.error.split())[:160])
    how = r.source + (f" in {seconds:.1f}s" if seconds is not None and r.source == "measured" else "")
    return f"[{index + 1}/{total}] {r.candidate.label()}: {', '.join(parts)} ({how})"


def line_progress(write: Callable[[str], Any]) -> Callback:
    """A search callback that writes one line per finished candidate (measured or stored; skipped ones are
    summed up with the result)."""
    started: dict[str, float] = {}

    def callback(event: str, candidate: Any, result: Any, index: int, total: int) -> None:
        if event == "start":
            started[candidate.id] = time.monotonic()
        elif result is not None and result.source != "skipped":
            t0 = started.pop(candidate.id, None)
            write(candidate_line(result, index, total, None if t0 is None else time.monotonic() - t0))

    return callback


@contextmanager
def live_progress(console: Console) -> Iterator[Callback]:
    """A live progress bar on ``console`` (a terminal) while the search runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("[bold]measuring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
        console=console,
        transient=False,
    )
    task = None

    def callback(event: str, candidate: Any, result: Any, index: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("", total=total)
        if event == "start":
            bar.update(task, total=total, description=candidate.label())
        elif result is not None and result.source == "skipped":  # the last measured one stays in view
            bar.update(task, total=total, completed=index + 1)
        else:
            bar.update(
                task,
                total=total,
                completed=index + 1,
                description=f"{candidate.label()} → {result.measurement.status} ({result.source})",
            )

    with bar:
        yield callback


@contextmanager
def progress_callback(progress: ProgressOption, callback: Callback | None = None) -> Iterator[Callback | None]:
    """The search callback for ``fit(progress=..., callback=...)``: the caller's ``callback`` (every event)
    together with the display ``progress`` asks for. The default display is a live bar when stderr is a
    terminal and one line per finished candidate on stderr otherwise; it is off when a ``callback`` is given
    (the caller shows progress itself, as the CLI does) or the "chipfit" logger is set above INFO, unless
    ``progress=True``."""
    if progress is None:  # off too when the "chipfit" logger is set above INFO (the CLI's --quiet)
        level = logging.getLogger("chipfit").level
        progress = callback is None and (level == logging.NOTSET or level <= logging.INFO)
    if progress is False:
        yield callback
        return
    if callable(progress):
        user = progress

        def on_done(event: str, candidate: Any, result: Any, index: int, total: int) -> None:
            if event == "done" and result is not None and result.source != "skipped":
                user(result)

        yield _both(callback, on_done)
        return
    if sys.stderr.isatty():
        from rich.console import Console

        with live_progress(Console(stderr=True)) as live:
            yield _both(callback, live)
        return
    yield _both(callback, line_progress(lambda line: print(line, file=sys.stderr, flush=True)))


def _both(first: Callback | None, second: Callback) -> Callback:
    if first is None:
        return second

    def callback(event: str, candidate: Any, result: Any, index: int, total: int) -> None:
        first(event, candidate, result, index, total)
        second(event, candidate, result, index, total)

    return callback
