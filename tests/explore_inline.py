"""Helpers for explore's tests on a manual clock: the clock itself, and a runner that runs each trial in this
process, one step at a time as the clock reaches it, through the real ``TrialContext`` (so reports, ASHA,
deadlines and the cores the scheduler assigns go through chipfit's own code). Only the process boundary
and the passing of time are replaced."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from chipfit.explore.budget import Budget, CostMeter
from chipfit.explore.job import TrialJob, TrialOutcome
from chipfit.explore.ledger import Ledger
from chipfit.explore.loop import LoopSettings, run_loop
from chipfit.explore.schedule import DeadlineScheduler
from chipfit.explore.space import load_space
from chipfit.explore.studies import open_study, reopen_trial
from chipfit.explore.trial import BudgetStop, Rejected, TrialContext

SPACE = """
trainable: trainable.py:train
metric: accuracy
resource: {min: 1, max: 6}
reduction_factor: 3
seconds_per_unit: 1.0
sampler: random
params:
  quality: {type: float, low: 0.01, high: 1.0}
"""


class ManualClock:
    """Time passes only when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1.7e9 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Plan:
    """A scripted trainable: ``steps`` reports, ``step_s`` seconds apart, of 1 - 1/(1 + quality·step)."""

    steps: int
    step_s: float
    quality: float


@dataclass
class _Handle:
    ctx: TrialContext
    plan: Plan
    t0: float
    done: int = 0
    killed: bool = False
    outcome: TrialOutcome | None = None
    threads_seen: list[int] = field(default_factory=list)


class InlineRunner:
    name = "inline"

    def __init__(self, study: Any, storage: Any, clock: ManualClock, plans: dict[int, Plan], default: Plan) -> None:
        self.study, self.storage, self.clock, self.plans, self.default = study, storage, clock, plans, default
        self.handles: dict[int, _Handle] = {}

    def start(self, job: TrialJob) -> _Handle:
        trial = reopen_trial(self.study, self.storage, job.trial_number)
        ctx = TrialContext(trial, job, load_space(job.space), self.clock)
        h = _Handle(ctx, self.plans.get(job.trial_number, self.default), self.clock.monotonic())
        h.threads_seen.append(ctx.threads)
        self.handles[job.trial_number] = h
        return h

    def poll(self, h: _Handle) -> TrialOutcome | None:
        if h.killed:
            return TrialOutcome("stopped", reason="cut at the budget's limit")
        while h.outcome is None and h.t0 + (h.done + 1) * h.plan.step_s <= self.clock.monotonic():
            h.done += 1
            try:
                h.ctx.report(1 - 1 / (1 + h.plan.quality * h.done), h.done)
            except optuna.TrialPruned as exc:
                h.outcome = TrialOutcome("pruned", reason=str(exc))
            except BudgetStop as exc:
                h.outcome = TrialOutcome("stopped", reason=str(exc))
            except Rejected as exc:
                h.outcome = TrialOutcome("rejected", reason=str(exc))
            h.threads_seen.append(h.ctx.threads)
            if h.outcome is None and h.done >= h.plan.steps:
                h.outcome = TrialOutcome("complete", value=h.ctx.reports[-1][1], steps=h.done)
        return h.outcome

    def kill(self, h: _Handle) -> None:
        h.killed = h.outcome is None

    def ready(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Run:
    study: Any
    storage: Any
    meter: CostMeter
    runner: InlineRunner
    stopped_by: str
    sched: DeadlineScheduler | None


def space_file(tmp_path: Path, text: str = SPACE) -> Path:
    (tmp_path / "trainable.py").write_text("def train(ctx):\n    raise RuntimeError('run inline only')\n")
    (tmp_path / "space.yaml").write_text(text)
    return tmp_path / "space.yaml"


def run_inline(
    tmp_path: Path,
    budget: Budget,
    plans: dict[int, Plan],
    default: Plan,
    *,
    clock: ManualClock,
    storage: Any = None,
    cores: int = 2,
    concurrency: int = 2,
    deadline_s: float | None = None,
    prune: bool = False,
    usd_per_hour: float = 3.6,
    max_trials: int | None = None,
) -> Run:
    """The real driver loop (``run_loop``) on the manual clock, trials run inline."""
    space = load_space(space_file(tmp_path))
    storage = storage or optuna.storages.InMemoryStorage()
    study = open_study(space, storage, seed=0, prune=prune)
    threads = max(1, cores // concurrency)
    meter = CostMeter(budget, usd_per_hour)
    ledger = Ledger(study, meter, threads / cores, clock)
    runner = InlineRunner(study, storage, clock, plans, default)
    sched = DeadlineScheduler(tmp_path / "threads", cores, concurrency) if deadline_s is not None else None
    settings = LoopSettings(
        concurrency=concurrency,
        threads=threads,
        share=threads / cores,
        deadline_s=deadline_s,
        max_trials=max_trials,
        prune=prune,
    )
    stopped_by = run_loop(
        study, space, runner, ledger, settings, storage_url="inline", work=tmp_path, sched=sched, clock=clock
    )
    return Run(study, storage, meter, runner, stopped_by, sched)


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Trials run inline apply their cores to torch in this process: put them back after."""
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(n or torch.get_num_threads())
