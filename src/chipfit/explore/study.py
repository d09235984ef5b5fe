"""``chipfit explore``: sample configurations, train each in its own process (or Ray task), stop the laggards
early with ASHA (Optuna's SuccessiveHalvingPruner), and never spend beyond the budget.

The study lives in the results store's database (Optuna RDB storage on the same SQLAlchemy URL), named after
the space file's hash, so the same command after ``kill -9`` resumes: completed trials and every reported
rung are kept, the money already spent is counted (the spending is recorded in the study as it goes, ahead
of time: see ledger.py), and trials the kill left running are marked failed ("interrupted"). The budget is
the study's total: a resumed run spends only what earlier runs left, and says so as it starts;
``new_study`` starts a fresh study instead (the earlier one is kept). Checkpoints and exported models live
in the study's folder under ``$CHIPFIT_HOME/explore/`` (``studies.study_folder``), not in ``out``.

Deadline mode (``deadline_s``) maximises the best trial's metric by a wall-clock deadline instead: a new
trial starts only while the time left can train it to the end (at the measured seconds per unit), and once
none can, the trials behind the leader are stopped and their cores go to the leading trials (HyperSched).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.errors import SpecError
from chipfit.explore.budget import Budget, CostMeter
from chipfit.explore.clock import SYSTEM_CLOCK, Clock
from chipfit.explore.job import HardwareBound
from chipfit.explore.ledger import Ledger
from chipfit.explore.loop import STARTUP_S, Callback, LoopSettings, run_loop
from chipfit.explore.schedule import DeadlineScheduler
from chipfit.explore.space import ExploreSpace, load_space
from chipfit.explore.studies import history, open_storage, open_study, study_folder, trial_state, winner
from chipfit.hardware.detect import cpu_quota

__all__ = ["ExploreResult", "explore", "preview"]

log = logging.getLogger("chipfit")


@dataclass
class ExploreResult:
    meter: CostMeter
    trials: dict[str, int]
    winner: dict[str, Any] | None
    study_name: str
    stopped_by: str
    space: ExploreSpace
    bound: HardwareBound | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every trial: params, curve, state, cost
    artifact: Any = None  # the winner's FitResult when it was delivered through fit
    resumed: bool = False  # the study had run before (its spending counts against the budget)
    spent_before: float = 0.0  # what earlier runs of the study spent, in the budget's unit
    notes: list[str] = field(default_factory=list)  # what the run had to work around (e.g. files gone)

    def to_dict(self) -> dict[str, Any]:
        m = self.meter.to_dict()
        return {
            "budget": m["budget"],
            "spent": m["spent"],
            "resumed": self.resumed,
            "spent_before": self.spent_before,
            "left": m["left"],
            "unit": m["unit"],
            "spent_usd": m["spent_usd"],
            "trials": self.trials,
            "winner": self.winner,
            "study": self.study_name,
            "stopped_by": self.stopped_by,
            "bound": self.bound.public_dict() if self.bound is not None else None,
            "artifact": str(self.artifact.out_dir) if self.artifact is not None and self.artifact.out_dir else None,
            "notes": self.notes,
        }


def amount(value: float, unit: str) -> str:
    """An amount in a budget's unit, as the summary prints it: $0.02, 0.005 cpu-h, 120 s."""
    return f"${value:.4g}" if unit == "usd" else f"{value:.4g} {unit}"


def resume_line(name: str, space_path: Path, trials: int, meter: CostMeter, spent_before: float) -> str:
    """What a resumed run says as it starts (one line)."""
    unit = meter.budget.unit
    line = (
        f"resuming study {name} of {space_path}: {trials} trial{'s' if trials != 1 else ''}, "
        f"{amount(spent_before, unit)} already spent of "
        f"the budget {amount(meter.budget.amount, unit)}; --new-study starts a fresh one"
    )
    if meter.left <= 0:
        line += " (the budget is spent: raise --budget, the study's total, to go on)"
    return line


def preview(space: ExploreSpace, meter: CostMeter, seconds_per_unit: float) -> dict[str, Any]:
    """What the budget buys under ASHA: configurations started, and how many reach each rung (1/η go on)."""
    rungs = space.rungs
    eta = space.reduction_factor
    per_config = STARTUP_S
    prev = 0
    for k, r in enumerate(rungs):
        per_config += (r - prev) * seconds_per_unit / eta**k  # the share of configs that train to rung k
        prev = r
    seconds = meter.seconds_left()
    if meter.budget.unit == "units":  # what the units left buy, with no time charged for a trial's start
        seconds = meter.left * seconds_per_unit
        per_config -= STARTUP_S
    n = int(seconds // per_config)
    full = STARTUP_S * (meter.budget.unit != "units") + space.max_resource * seconds_per_unit
    return {
        "seconds_per_unit": seconds_per_unit,
        "full_trial_s": full,
        "configurations": n,
        "rungs": [{"resource": r, "configurations": max(0, math.floor(n / eta**k))} for k, r in enumerate(rungs)],
        "budget_left_s": seconds,
        "full_trials_without_asha": int(seconds // full),
    }


def explore(
    space_path: str | Path,
    budget: Budget | None,
    *,
    deadline_s: float | None = None,
    out: str | Path | None = None,
    store: str | None = None,
    target: str | None = None,
    concurrency: int = 1,
    max_trial_s: float | None = None,
    trial_memory_mb: int | None = None,
    max_p99_ms: float | None = None,
    max_memory_mb: float | None = None,
    deliver: bool = True,
    deliver_backends: tuple[str, ...] | None = ("onnxruntime",),
    prune: bool = True,
    ray: str | None = None,
    seed: int = 0,
    max_trials: int | None = None,
    callback: Callback | None = None,
    clock: Clock = SYSTEM_CLOCK,
    trust_pickle: bool = False,
    new_study: bool = False,
    announce: Callable[[str], None] | None = None,
    train_memory_mb: float | None = None,
) -> ExploreResult:
    """Run (or resume) the study of ``space_path`` until the budget (or the deadline) is spent, or the study
    holds ``max_trials`` trials. The budget is the study's total: a resumed study counts what its earlier runs
    spent, and ``announce`` (default: a warning on the ``chipfit`` logger) is told so before anything runs;
    ``new_study`` starts a fresh study instead, keeping the earlier one. ``trust_pickle`` lets the trials load
    backbone/teacher files and checkpoints that hold pickles: dangerous, loading them runs code from them.
    ``train_memory_mb``: each trial's training step must fit it; one that does not trains under a remat plan
    (built-in recipes; user trainables through ``ctx.remat(module)``), or is rejected when no plan fits."""
    import optuna

    from chipfit.explore.constraint import prepare_bound
    from chipfit.explore.runner import make_runner
    from chipfit.hardware.catalog import get_target
    from chipfit.hardware.local import local_target
    from chipfit.store import Store, default_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_path)
    if concurrency < 1:
        raise SpecError(f"--concurrency must be ≥ 1, got {concurrency}.")
    if train_memory_mb is not None and not (train_memory_mb > 0 and math.isfinite(train_memory_mb)):
        raise SpecError(f"--train-memory-mb must be a positive number of MB, got {train_memory_mb!r}.")
    if max_trials is not None and max_trials < 1:
        raise SpecError(f"--max-trials must be ≥ 1, got {max_trials}.")
    if budget is None and deadline_s is None:
        raise SpecError("Give --budget (200usd, 5gpu-h, 10cpu-h, 2h) or --deadline (3h), or both.")
    if deadline_s is not None and not (deadline_s > 0 and math.isfinite(deadline_s)):
        raise SpecError(f"--deadline must be a positive time such as 3h or 20m, got {deadline_s!r} seconds.")
    runner = make_runner(ray, str(space.path))  # its trial server imports while the study is set up
    try:
        local = local_target(measure=False)[0]
        tgt = get_target(target) if target else local
        meter = CostMeter(budget or Budget(deadline_s or 0.0, "s"), tgt.usd_per_hour, "gpu" if tgt.gpu else "cpu")
        cores = max(1, int(tgt.threads or tgt.cores or cpu_quota()))
        url = store or default_url()
        Store(url)  # creates the file and its folder, with a clear error when it cannot
        work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="chipfit-explore-"))
        bound = prepare_bound(space, tgt, tgt.name == local.name, max_p99_ms, max_memory_mb, url, work / "checks")
        study = open_study(space, open_storage(url), seed, prune, new=new_study)
        threads = max(1, cores // concurrency)
        ledger = Ledger(study, meter, threads / cores, clock)  # what earlier runs spent is on the meter
        trials_before, spent_before = len(study.trials), meter.spent
        resumed = trials_before > 0 or spent_before > 0
        if resumed:
            (announce or log.warning)(
                resume_line(study.study_name, Path(space_path), trials_before, meter, spent_before)
            )
        if meter.budget.unit == "units" and meter.left < space.min_resource:
            raise SpecError(
                f"--budget {meter.budget} leaves {meter.left:g} resource units, less than the first rung "
                f"({space.min_resource}); raise the budget. Nothing was spent."
            )
        if space.seconds_per_unit is not None and not study.trials:
            full = STARTUP_S + space.max_resource * space.seconds_per_unit
            if full > meter.seconds_left():
                raise SpecError(
                    f"--budget {meter.budget} buys {meter.seconds_left():.0f}s of {tgt.name}, less than one "
                    f"full-fidelity trial ({full:.0f}s at {space.seconds_per_unit:g}s per unit × "
                    f"{space.max_resource}); raise the budget or lower resource.max. Nothing was spent."
                )
        settings = LoopSettings(
            concurrency=concurrency,
            threads=threads,
            share=threads / cores,
            deadline_s=deadline_s,
            max_trial_s=max_trial_s,
            max_trials=max_trials,
            trial_memory_mb=trial_memory_mb,
            bound=bound,
            export=(out is not None or bound is not None) and bool(space.deploy),
            prune=prune,
            trust_pickle=trust_pickle,
            seed=seed,
            train_memory_mb=train_memory_mb,
        )
        sched = DeadlineScheduler(work / "threads", cores, concurrency) if deadline_s is not None else None
        stopped_by = run_loop(
            study,
            space,
            runner,
            ledger,
            settings,
            storage_url=url,
            work=work,
            sched=sched,
            clock=clock,
            callback=callback,
            checkpoints=study_folder(url, study.study_name) / "checkpoints",
        )
    finally:
        runner.close()
    states = Counter(trial_state(t) for t in study.get_trials(deepcopy=False))
    result = ExploreResult(
        meter, dict(states), winner(study), study.study_name, stopped_by, space, bound, history(study)
    )
    result.resumed, result.spent_before = resumed, spent_before
    if deliver and out is not None and result.winner and result.winner.get("onnx"):
        from chipfit.explore.deliver import deliver_winner

        _skip_gone(study, result)
        if result.winner is not None:
            result.artifact = deliver_winner(result, Path(out) / "artifact", url, tgt, deliver_backends)
    return result


def _skip_gone(study: Any, result: ExploreResult) -> None:
    """A trial whose exported model is gone (a study from before models were kept in ``$CHIPFIT_HOME``, its
    ``--out`` folder deleted) cannot be delivered: the best trial whose model is still there is, with a note."""
    best = result.winner or {}
    if not best.get("onnx") or Path(best["onnx"]).exists():
        return
    result.winner = winner(study, lambda t: bool(t.user_attrs.get("onnx")) and Path(t.user_attrs["onnx"]).exists())
    now = f"trial {result.winner['trial']}, the best whose model is still there" if result.winner else "no trial"
    note = f"trial {best['trial']}'s model {best['onnx']} is gone (its folder was deleted); delivering {now}"
    log.warning(note)
    result.notes.append(note)
