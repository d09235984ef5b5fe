"""Deadline mode's scheduler (the HyperSched idea; Ray's ResourceChangingScheduler is its maintained
relative): once the time left cannot train a new trial to the end, no new trial starts, the running trials
behind the leader are stopped, and the cores they held go to the leading trial, which applies them to torch
at its next report (``ctx.threads``)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["DeadlineScheduler", "measured_seconds_per_unit"]

_CACHE: dict[str, tuple[float, float | None]] = {}


def measured_seconds_per_unit(study: Any, every_s: float = 1.0) -> float | None:
    """Median seconds per resource unit over the trials that reported (start-up included: conservative)."""
    hit = _CACHE.get(study.study_name)
    if hit is not None and time.monotonic() - hit[0] < every_s:
        return hit[1]
    rates = []
    for t in study.get_trials(deepcopy=False):
        steps = max(t.intermediate_values, default=0)
        spent = t.user_attrs.get("charged_s")
        if steps and spent:
            rates.append(float(spent) / steps)
    value = statistics.median(rates) if rates else None
    _CACHE[study.study_name] = (time.monotonic(), value)
    return value


class DeadlineScheduler:
    def __init__(self, folder: Path, cores: int, concurrency: int) -> None:
        self.folder = folder
        self.cores = cores
        self.concurrency = concurrency
        self.closed = False  # no new trial can finish by the deadline
        folder.mkdir(parents=True, exist_ok=True)

    def threads_file(self, number: int) -> Path:
        return self.folder / f"trial-{number}"

    def assign(self, number: int, threads: int) -> None:
        self.threads_file(number).write_text(str(int(threads)))

    def close(self) -> None:
        self.closed = True

    def rebalance(self, study: Any, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The running trials to stop (behind the leader at the same step); the leader gets the free cores."""
        if not running:
            return []
        curves = {}
        for r in running:
            t = study._storage.get_trial(r["trial"]._trial_id)
            curves[r["trial"].number] = dict(t.intermediate_values)
        maximize = study.direction.name == "MAXIMIZE"
        reported = [r for r in running if curves[r["trial"].number]]
        if not reported:
            return []

        def latest(r: dict[str, Any]) -> tuple[int, float]:
            c = curves[r["trial"].number]
            step = max(c)
            return step, c[step]

        def better(a: float, b: float) -> bool:
            return a > b if maximize else a < b

        leader = max(reported, key=lambda r: latest(r)[1] if maximize else -latest(r)[1])
        lead = curves[leader["trial"].number]
        stop = []
        for r in reported:
            if r is leader or r.get("stopping"):
                continue
            step, value = latest(r)
            ref_steps = [s for s in lead if s <= step]
            ref = lead[max(ref_steps)] if ref_steps else None
            if ref is not None and better(ref, value):
                r["stopping"] = True
                r["reason"] = (
                    f"stopped by the deadline scheduler: {value:.4g} at step {step}, behind trial "
                    f"{leader['trial'].number} ({ref:.4g}); its cores went to the leader"
                )
                stop.append(r)
        others = sum(1 for r in running if r is not leader and not r.get("stopping"))
        self.assign(leader["trial"].number, max(1, self.cores - others * max(1, self.cores // self.concurrency)))
        return stop
