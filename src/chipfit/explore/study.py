"""``chipfit explore``: sample configurations, train each in its own process (or Ray task), stop the laggards
early with ASHA (Optuna's SuccessiveHalvingPruner), and never spend beyond the budget.

The study lives in the results store's database (Optuna RDB storage on the same SQLAlchemy URL), named after
the space file's hash, so the same command after ``kill -9`` resumes: completed trials and every reported
rung are kept, the money already spent is counted (each trial records its charged seconds as it reports),
and trials the kill left running are marked failed ("interrupted").

Deadline mode (``deadline_s``) maximises the best trial's metric by a wall-clock deadline instead: a new
trial starts only while the time left can train it to the end (at the measured seconds per unit), and once
none can, the trials behind the leader are stopped and their cores go to the leading trials (HyperSched).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.errors import SpecError
from chipfit.explore.budget import Budget, CostMeter
from chipfit.explore.schedule import DeadlineScheduler, measured_seconds_per_unit
from chipfit.explore.space import ExploreSpace, load_space

__all__ = ["ExploreResult", "explore", "preview"]

log = logging.getLogger("chipfit")
STARTUP_S = 1.0  # a trial's start (a fork from the preloaded server, the study's load) when not yet measured


@dataclass
class ExploreResult:
    meter: CostMeter
    trials: dict[str, int]
    winner: dict[str, Any] | None
    study_name: str
    stopped_by: str
    space: ExploreSpace
    bound: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every trial: params, curve, state, cost
    artifact: Any = None  # the winner's FitResult when it was delivered through fit

    def to_dict(self) -> dict[str, Any]:
        m = self.meter.to_dict()
        return {
            "budget": m["budget"],
            "spent": m["spent"],
            "left": m["left"],
            "unit": m["unit"],
            "spent_usd": m["spent_usd"],
            "trials": self.trials,
            "winner": self.winner,
            "study": self.study_name,
            "stopped_by": self.stopped_by,
            "bound": {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)  # strict JSON: no Infinity
                for k, v in (self.bound or {}).items()
                if k not in ("predictor", "store")
            }
            or None,
            "artifact": str(self.artifact.out_dir) if self.artifact is not None and self.artifact.out_dir else None,
        }


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
    n = int(seconds // per_config)
    full = STARTUP_S + space.max_resource * seconds_per_unit
    return {
        "seconds_per_unit": seconds_per_unit,
        "full_trial_s": full,
        "configurations": n,
        "rungs": [{"resource": r, "configurations": max(0, math.floor(n / eta**k))} for k, r in enumerate(rungs)],
        "budget_left_s": seconds,
        "full_trials_without_asha": int(seconds // full),
    }


def _open_study(space: ExploreSpace, url: str, seed: int, prune: bool) -> Any:
    import optuna

    name = f"explore-{space.sha256[:16]}"
    sampler = (
        optuna.samplers.RandomSampler(seed=seed) if space.sampler == "random" else optuna.samplers.TPESampler(seed=seed)
    )
    pruner = (
        optuna.pruners.SuccessiveHalvingPruner(min_resource=space.min_resource, reduction_factor=space.reduction_factor)
        if prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name,
        storage=url,
        load_if_exists=True,
        direction="maximize" if space.direction == "maximize" else "minimize",
        sampler=sampler,
        pruner=pruner,
    )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted (the run was killed); resumed")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left running by a killed run
    return study


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
    callback: Any = None,
) -> ExploreResult:
    """Run (or resume) the study of ``space_path`` until the budget (or the deadline) is spent."""
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
    if budget is None and deadline_s is None:
        raise SpecError("Give --budget (200usd, 5gpu-h, 10cpu-h, 2h) or --deadline (3h), or both.")
    if deadline_s is not None and not (deadline_s > 0 and math.isfinite(deadline_s)):
        raise SpecError(f"--deadline must be a positive time such as 3h or 20m, got {deadline_s!r} seconds.")
    local = local_target(measure=False)[0]
    tgt = get_target(target) if target else local
    meter = CostMeter(budget or Budget(deadline_s or 0.0, "s"), tgt.usd_per_hour, "gpu" if tgt.gpu else "cpu")
    cores = max(1, int(tgt.threads or tgt.cores or os.cpu_count() or 1))
    url = store or default_url()
    Store(url)  # creates the file and its folder, with a clear error when it cannot
    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="chipfit-explore-"))
    bound = prepare_bound(space, tgt, tgt.name == local.name, max_p99_ms, max_memory_mb, url, work / "checks")
    study = _open_study(space, url, seed, prune)
    meter.device_s = sum(
        float(t.user_attrs.get("charged_device_s", t.user_attrs.get("charged_s", 0.0)))
        for t in study.get_trials(deepcopy=False)
    )
    wall_before = float(study.user_attrs.get("wall_s", 0.0))
    if space.seconds_per_unit is not None and not study.trials:
        full = STARTUP_S + space.max_resource * space.seconds_per_unit
        if full > meter.seconds_left():
            raise SpecError(
                f"--budget {meter.budget} buys {meter.seconds_left():.0f}s of {tgt.name}, less than one "
                f"full-fidelity trial ({full:.0f}s at {space.seconds_per_unit:g}s per unit × "
                f"{space.max_resource}); raise the budget or lower resource.max. Nothing was spent."
            )
    runner = make_runner(ray, str(space.path))
    sched = DeadlineScheduler(work / "threads", cores, concurrency) if deadline_s is not None else None
    threads = max(1, cores // concurrency)
    started = time.monotonic()
    stopped_by = "budget"
    running: list[dict[str, Any]] = []

    def wall() -> float:
        return wall_before + time.monotonic() - started

    spu = space.seconds_per_unit or 0.0
    share = threads / cores  # the part of the target machine one trial holds (its price share)

    def elapsed(r: dict[str, Any]) -> float:
        return time.monotonic() - r["t0"]

    def wall_left(n: int) -> float:
        """Wall seconds until the budget (or the deadline) is spent with ``n`` trials running."""
        if meter.budget.unit == "s":
            left = meter.budget.amount - wall()
        else:
            left = (meter.seconds_left() - sum(elapsed(r) * share for r in running)) / (share * max(1, n))
        return min(left, deadline_s - wall()) if deadline_s is not None else left

    try:
        while True:
            meter.wall_s = wall()
            running = [r for r in running if not _finish(study, meter, runner, r, share, callback)]
            left = wall_left(len(running) + 1)
            full_s = STARTUP_S + space.max_resource * (measured_seconds_per_unit(study) or spu)
            need = full_s if deadline_s is not None else STARTUP_S + space.min_resource * spu
            if len(running) < concurrency and left > need and not (sched and sched.closed):
                running.append(
                    _start(
                        study,
                        space,
                        url,
                        work,
                        runner,
                        left,
                        max_trial_s,
                        trial_memory_mb,
                        threads,
                        share,
                        bound,
                        (out is not None or bound is not None) and bool(space.deploy),
                        sched,
                        prune,
                    )
                )
                if callback:
                    callback("start", running[-1], meter)
                continue
            if sched is not None and len(running) < concurrency and left <= need:
                if not sched.closed:
                    stopped_by = "deadline"
                    sched.close()
                for r in sched.rebalance(study, running):
                    runner.kill(r["handle"])
            if not running:
                break
            exhausted = wall_left(len(running)) <= 0
            for r in running:  # never past the budget: trials are cut when it runs out
                if exhausted or elapsed(r) > r["limit_s"] + 0.2:
                    runner.kill(r["handle"])
            time.sleep(0.05)
    finally:
        for r in running:
            runner.kill(r["handle"])
        meter.wall_s = wall()
        study.set_user_attr("wall_s", meter.wall_s)
        runner.close()
    states = Counter(_state(t) for t in study.get_trials(deepcopy=False))
    result = ExploreResult(
        meter, dict(states), _winner(study), study.study_name, stopped_by, space, bound, _history(study)
    )
    if deliver and out is not None and result.winner and result.winner.get("onnx"):
        from chipfit.explore.deliver import deliver_winner

        result.artifact = deliver_winner(result, Path(out) / "artifact", url, tgt, deliver_backends)
    return result


def _state(t: Any) -> str:
    if t.user_attrs.get("status") in ("rejected", "stopped"):
        return str(t.user_attrs["status"])  # told to Optuna as PRUNED; kept apart here
    return str(t.state.name.lower())


def _start(
    study: Any,
    space: ExploreSpace,
    url: str,
    work: Path,
    runner: Any,
    left: float,
    max_trial_s: float | None,
    memory_mb: int | None,
    threads: int,
    share: float,
    bound: dict[str, Any] | None,
    export: bool,
    sched: DeadlineScheduler | None,
    prune: bool,
) -> dict[str, Any]:
    trial = study.ask()
    config = space.sample(trial)
    limit = min(left, max_trial_s or math.inf)
    job = {
        "space": str(space.path),
        "study": study.study_name,
        "storage": url,
        "trial_id": trial._trial_id,
        "config": config,
        "checkpoint": str((work / "checkpoints" / f"trial-{trial.number}.pkl").resolve()),
        "deadline": time.time() + limit,
        "max_memory_mb": memory_mb,
        "threads": threads,
        "share": share,
        "threads_file": str(sched.threads_file(trial.number)) if sched else None,
        "bound": bound,
        "export": export,
        "prune": prune,
    }
    if sched is not None:
        sched.assign(trial.number, threads)
    study._storage.set_trial_user_attr(trial._trial_id, "threads", threads)
    study._storage.set_trial_user_attr(trial._trial_id, "checkpoint", job["checkpoint"])
    handle = runner.start(job)
    return {"trial": trial, "handle": handle, "t0": time.monotonic(), "limit_s": limit, "config": config}


def _finish(study: Any, meter: CostMeter, runner: Any, r: dict[str, Any], share: float, callback: Any) -> bool:
    """Tell the study how a finished trial ended and charge its time; False while it still runs."""
    import optuna

    outcome = runner.poll(r["handle"])
    if outcome is None:
        return False
    seconds = time.monotonic() - r["t0"]
    device_s = seconds * share
    meter.charge(device_s)
    trial = r["trial"]
    status = outcome.get("status", "fail")
    reason = r.get("reason") if status == "stopped" and r.get("reason") else outcome.get("reason", "")
    attrs = {
        "charged_s": seconds,
        "charged_device_s": device_s,
        "charged_usd": device_s / 3600 * meter.usd_per_hour,
        "status": status,
    }
    if reason:
        attrs["reason"] = reason
    if outcome.get("onnx"):
        attrs["onnx"] = outcome["onnx"]
    for k, v in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, k, v)
    if status == "complete":
        study.tell(trial, outcome["value"])
    elif status in ("pruned", "stopped", "rejected"):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    if callback:
        callback("done", r | {"status": status, "reason": reason}, meter)
    return True


def _winner(study: Any) -> dict[str, Any] | None:
    """The best completed trial (with a bound, completed means it met the bound when checked)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best = max(done, key=lambda t: (sign * t.value, -t.number))
    return {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "checkpoint": best.user_attrs.get("checkpoint"),
        "onnx": best.user_attrs.get("onnx"),
        "hardware": best.user_attrs.get("hardware"),
        "charged_s": best.user_attrs.get("charged_s"),
        "charged_usd": best.user_attrs.get("charged_usd"),
    }


def _history(study: Any) -> list[dict[str, Any]]:
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append(
            {
                "trial": t.number,
                "state": _state(t),
                "value": t.value,
                "params": t.params,
                "curve": sorted((int(k), float(v)) for k, v in t.intermediate_values.items()),
                "charged_s": t.user_attrs.get("charged_s"),
                "charged_usd": t.user_attrs.get("charged_usd"),
                "reason": t.user_attrs.get("reason"),
                "hardware": t.user_attrs.get("hardware"),
                "threads": t.user_attrs.get("threads_used", t.user_attrs.get("threads")),
            }
        )
    return out
