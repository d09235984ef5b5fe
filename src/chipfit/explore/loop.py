"""The driver loop of ``chipfit explore``: start trials while the budget (or deadline) can pay for them,
collect their outcomes, charge them, stop them when the money or the time runs out.

It takes its clock, its runner and its study from the caller, so budget accounting and deadline mode are
tested on a manual clock with trials that advance on it (tests/test_explore_modes.py), and run for real on
the system clock with trials in their own processes or Ray tasks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chipfit.explore.clock import Clock
from chipfit.explore.job import HardwareBound, TrialJob, TrialOutcome
from chipfit.explore.ledger import Ledger
from chipfit.explore.schedule import DeadlineScheduler, measured_seconds_per_unit
from chipfit.explore.space import ExploreSpace

__all__ = ["STARTUP_S", "LoopSettings", "Running", "run_loop"]

STARTUP_S = 1.0  # a trial's start (a fork from the preloaded server, the study's load) when not yet measured
GRACE_S = 0.2  # a trial past its own limit by this much is killed (it stops itself at its next report)


@dataclass(frozen=True)
class LoopSettings:
    concurrency: int = 1
    threads: int = 1  # cores each trial holds
    share: float = 1.0  # the part of the target machine a trial holds
    deadline_s: float | None = None  # deadline mode: wall seconds of the whole study
    max_trial_s: float | None = None
    max_trials: int | None = None  # trials in the study, earlier runs included
    trial_memory_mb: int | None = None
    bound: HardwareBound | None = None
    export: bool = False
    prune: bool = True
    poll_s: float = 0.05
    trust_pickle: bool = False  # trials may load pickled model files and checkpoints (runs code from them)
    seed: int = 0  # the study's seed: parameters a trainable suggests itself are drawn from it too
    train_memory_mb: float | None = None  # training steps must fit this (remat plans where they do not)


@dataclass
class Running:
    trial: Any  # the optuna.trial.Trial
    job: TrialJob
    handle: Any
    limit_s: float
    reason: str = ""  # why the driver stopped it, when it did

    @property
    def number(self) -> int:
        return int(self.trial.number)


Callback = Callable[[str, Running, "TrialOutcome | None", Any], None]


def run_loop(
    study: Any,
    space: ExploreSpace,
    runner: Any,
    ledger: Ledger,
    settings: LoopSettings,
    *,
    storage_url: str,
    work: Path,
    sched: DeadlineScheduler | None,
    clock: Clock,
    callback: Callback | None = None,
    checkpoints: Path | None = None,
) -> str:
    """Run trials until the budget (or deadline, or ``max_trials``) is spent; returns what stopped it. Trials
    keep their checkpoints and models in ``checkpoints`` (default ``work/checkpoints``)."""
    import optuna

    s, meter = settings, ledger.meter
    running: list[Running] = []
    n_trials = len(study.get_trials(deepcopy=False))
    stopped_by = "budget"
    spu_at, spu_measured = -math.inf, None
    folder = checkpoints if checkpoints is not None else work / "checkpoints"

    units = meter.budget.unit == "units"

    def units_left() -> int:
        """Resource units a new trial may train: the budget's, less what the running trials may still train."""
        return int(meter.left - sum(r.job.max_units or 0 for r in running) + 1e-9)

    def wall_left(n: int) -> float:
        """Wall seconds until the budget (or the deadline) is spent with ``n`` trials running."""
        if units:
            left = math.inf
        elif meter.budget.unit == "s":
            left = meter.budget.amount - ledger.wall()
        else:
            left = (meter.seconds_left() - ledger.running_device_s()) / (s.share * max(1, n))
        return min(left, s.deadline_s - ledger.wall()) if s.deadline_s is not None else left

    runner.ready()
    ledger.begin()
    try:
        while True:
            running = [r for r in running if not _finish(study, ledger, runner, r, callback)]
            ledger.tick()
            if clock.monotonic() - spu_at >= 1.0:  # a database read: once a second is enough
                spu_at, spu_measured = clock.monotonic(), measured_seconds_per_unit(study.get_trials(deepcopy=False))
            spu = space.seconds_per_unit or 0.0
            left = wall_left(len(running) + 1)
            need = (
                STARTUP_S + space.max_resource * (spu_measured or spu)
                if s.deadline_s is not None
                else STARTUP_S + space.min_resource * spu
            )
            more = s.max_trials is None or n_trials < s.max_trials
            if units:  # a budget in resource units: a trial starts while the units left train it to a rung
                more = more and units_left() >= space.min_resource
            if len(running) < s.concurrency and left > need and more and not (sched and sched.closed):
                cap = min(space.max_resource, units_left()) if units else None
                running.append(_start(study, space, runner, ledger, s, left, storage_url, folder, sched, clock, cap))
                n_trials += 1
                if callback:
                    callback("start", running[-1], None, meter)
                continue
            if not more and not running:
                stopped_by = "budget" if units and units_left() < space.min_resource else "max_trials"
            if sched is not None and len(running) < s.concurrency and left <= need:
                if not sched.closed:
                    stopped_by = "deadline"
                    sched.close()
                maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
                numbers = {r.number for r in running}
                curves = {
                    t.number: dict(t.intermediate_values)
                    for t in study.get_trials(deepcopy=False)
                    if t.number in numbers
                }
                stop = sched.rebalance(curves, maximize)
                for r in running:
                    if r.number in stop:
                        r.reason = stop[r.number]
                        runner.kill(r.handle)
            if not running:
                break
            exhausted = wall_left(len(running)) <= 0
            for r in running:  # never past the budget: trials are cut when it runs out
                if exhausted or ledger.elapsed(r.trial) > r.limit_s + GRACE_S:
                    runner.kill(r.handle)
            clock.sleep(s.poll_s)
    finally:
        for r in running:  # interrupted (an exception, Ctrl-C): charged and recorded, not left running
            with contextlib.suppress(Exception):
                runner.kill(r.handle)
                _tell(study, ledger, r, TrialOutcome.failed("interrupted (the run stopped)"), callback)
        ledger.close()
    return stopped_by


def _start(
    study: Any,
    space: ExploreSpace,
    runner: Any,
    ledger: Ledger,
    s: LoopSettings,
    left: float,
    storage_url: str,
    folder: Path,
    sched: DeadlineScheduler | None,
    clock: Clock,
    max_units: int | None = None,
) -> Running:
    trial = study.ask()
    config = space.sample(trial)
    limit = min(left, s.max_trial_s or math.inf)
    job = TrialJob(
        space=str(space.path),
        study=study.study_name,
        storage=storage_url,
        trial_number=trial.number,
        config=config,
        checkpoint=str((folder / f"trial-{trial.number}.pkl").resolve()),
        deadline=clock.time() + limit,
        threads=s.threads,
        share=s.share,
        max_memory_mb=s.trial_memory_mb,
        threads_file=str(sched.threads_file(trial.number)) if sched else None,
        bound=s.bound,
        export=s.export,
        prune=s.prune,
        trust_pickle=s.trust_pickle,
        max_units=max_units,
        seed=s.seed,
        train_memory_mb=s.train_memory_mb,
    )
    if sched is not None:
        sched.assign(trial.number, s.threads)
    trial.set_user_attr("threads", s.threads)
    trial.set_user_attr("checkpoint", job.checkpoint)
    ledger.start(trial)
    return Running(trial, job, runner.start(job), limit)


def _finish(study: Any, ledger: Ledger, runner: Any, r: Running, callback: Callback | None) -> bool:
    """Tell the study how a finished trial ended and charge its time; False while it still runs."""
    outcome = runner.poll(r.handle)
    if outcome is None:
        return False
    if outcome.status == "stopped" and r.reason:
        outcome = replace(outcome, reason=r.reason)
    _tell(study, ledger, r, outcome, callback)
    return True


def _tell(study: Any, ledger: Ledger, r: Running, outcome: TrialOutcome, callback: Callback | None) -> None:
    import optuna

    ledger.finish(r.trial, _units(study, r.number, outcome))
    r.trial.set_user_attr("status", outcome.status)
    if outcome.reason:
        r.trial.set_user_attr("reason", outcome.reason)
    if outcome.onnx:
        r.trial.set_user_attr("onnx", outcome.onnx)
    if outcome.status == "complete":
        study.tell(r.trial, outcome.value)
    elif outcome.status in ("pruned", "stopped", "rejected"):
        study.tell(r.trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(r.trial, state=optuna.trial.TrialState.FAIL)
    if callback:
        callback("done", r, outcome, ledger.meter)


def _units(study: Any, number: int, outcome: TrialOutcome) -> float:
    """The resource units a trial trained: its outcome's last step, else (killed) the last step it reported. A
    failed trial costs at least one unit, so that a trainable that always fails cannot run on forever when the
    budget is in units. A trial that trained under a remat plan is charged its recomputation too: its units
    times (1 + the plan's recompute overhead); its time, in the other budgets, includes it as measured."""
    if outcome.steps is not None:
        units = float(outcome.steps)
    else:
        frozen = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        units = float(max(frozen[0].intermediate_values, default=0)) if frozen else 0.0
    units *= 1.0 + (outcome.remat_overhead or 0.0)
    return max(units, 1.0) if outcome.status == "fail" else units
