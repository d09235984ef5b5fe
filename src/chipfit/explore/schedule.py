"""Deadline mode's scheduler (the HyperSched idea; Ray's ResourceChangingScheduler is its maintained
relative): once the time left cannot train a new trial to the end, no new trial starts, the running trials
behind the leader are stopped, and the cores they held go to the leading trial, which applies them to torch
at its next report (``ctx.threads``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = ["DeadlineScheduler", "measured_seconds_per_unit"]


def measured_seconds_per_unit(trials: list[Any]) -> float | None:
    """Median seconds per resource unit over the (Optuna) trials that reported, start-up included
    (conservative): each trial's time at its last report over the step it reported."""
    rates = []
    for t in trials:
        steps = max(t.intermediate_values, default=0)
        spent = t.user_attrs.get("reported_s", t.user_attrs.get("charged_s"))
        if steps and spent:
            rates.append(float(spent) / steps)
    return statistics.median(rates) if rates else None


class DeadlineScheduler:
    def __init__(self, folder: Path, cores: int, concurrency: int) -> None:
        self.folder = folder
        self.cores = cores
        self.concurrency = concurrency
        self.closed = False  # no new trial can finish by the deadline
        self.stopping: set[int] = set()  # trials told to stop, not yet ended
        folder.mkdir(parents=True, exist_ok=True)

    def threads_file(self, number: int) -> Path:
        return self.folder / f"trial-{number}"

    def assign(self, number: int, threads: int) -> None:
        self.threads_file(number).write_text(str(int(threads)))

    def threads(self, number: int) -> int:
        return int(self.threads_file(number).read_text())

    def close(self) -> None:
        self.closed = True

    def rebalance(self, curves: dict[int, dict[int, float]], maximize: bool) -> dict[int, str]:
        """The running trials to stop — behind the leader at the same step — each with the reason; the
        leader is assigned the cores they free. ``curves`` maps each running trial to its reported curve."""
        reported = {n: c for n, c in curves.items() if c}
        if not reported:
            return {}

        def latest(n: int) -> tuple[int, float]:
            step = max(reported[n])
            return step, reported[n][step]

        def better(a: float, b: float) -> bool:
            return a > b if maximize else a < b

        leader = max(reported, key=lambda n: latest(n)[1] if maximize else -latest(n)[1])
        lead = reported[leader]
        stop = {}
        for n in reported:
            if n == leader or n in self.stopping:
                continue
            step, value = latest(n)
            ref_steps = [s for s in lead if s <= step]
            ref = lead[max(ref_steps)] if ref_steps else None
            if ref is not None and better(ref, value):
                self.stopping.add(n)
                stop[n] = (
                    f"stopped by the deadline scheduler: {value:.4g} at step {step}, behind trial "
                    f"{leader} ({ref:.4g}); its cores went to the leader"
                )
        others = sum(1 for n in curves if n != leader and n not in self.stopping)
        self.assign(leader, max(1, self.cores - others * max(1, self.cores // self.concurrency)))
        return stop
