"""``chipfit explore``: sample configurations, train each in its own process, stop the laggards early with
ASHA (Optuna's SuccessiveHalvingPruner), and never spend beyond the budget.

The study lives in the results store's database (Optuna RDB storage on the same SQLAlchemy URL), named after
the space file's hash, so the same command after ``kill -9`` resumes: completed trials and every reported
rung are kept, the money already spent is counted (each trial records its charged seconds as it reports),
and trials the kill left running are marked failed ("interrupted").
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipfit.errors import SpecError
from chipfit.explore.budget import Budget, CostMeter
from chipfit.explore.space import ExploreSpace, load_space

__all__ = ["ExploreResult", "explore", "preview"]

log = logging.getLogger("chipfit")
_STARTUP_S = 3.0  # a trial process's start (Python, torch import) before its first step, when not yet measured


@dataclass
class ExploreResult:
    meter: CostMeter
    trials: dict[str, int]
    winner: dict[str, Any] | None
    study_name: str
    stopped_by: str

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
        }


def preview(space: ExploreSpace, meter: CostMeter, seconds_per_unit: float) -> dict[str, Any]:
    """What the budget buys under ASHA: configurations started, and how many reach each rung (1/η go on)."""
    rungs = space.rungs
    eta = space.reduction_factor
    per_config = _STARTUP_S
    prev = 0
    for k, r in enumerate(rungs):
        per_config += (r - prev) * seconds_per_unit / eta**k  # the share of configs that train to rung k
        prev = r
    seconds = meter.seconds_left()
    n = int(seconds // per_config)
    full = _STARTUP_S + space.max_resource * seconds_per_unit
    return {
        "seconds_per_unit": seconds_per_unit,
        "full_trial_s": full,
        "configurations": n,
        "rungs": [{"resource": r, "configurations": max(0, math.floor(n / eta**k))} for k, r in enumerate(rungs)],
        "budget_left_s": seconds,
        "full_trials_without_asha": int(seconds // full),
    }


def _storage_url(store: str | None) -> str:
    from chipfit.store import default_url

    return store or default_url()


def explore(
    space_path: str | Path,
    budget: Budget,
    *,
    out: str | Path | None = None,
    store: str | None = None,
    target: str | None = None,
    concurrency: int = 1,
    max_trial_s: float | None = None,
    max_memory_mb: int | None = None,
    seed: int = 0,
    callback: Any = None,
) -> ExploreResult:
    """Run (or resume) the study of ``space_path`` until the budget is spent; returns what it found."""
    import optuna

    from chipfit.hardware.catalog import get_target
    from chipfit.hardware.local import local_target
    from chipfit.store import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_path)
    if concurrency < 1:
        raise SpecError(f"--concurrency must be ≥ 1, got {concurrency}.")
    tgt = get_target(target) if target else local_target(measure=False)[0]
    meter = CostMeter(budget, tgt.usd_per_hour, "gpu" if tgt.gpu else "cpu")
    url = _storage_url(store)
    Store(url)  # creates the file and its folder, with a clear error when it cannot
    name = f"explore-{space.sha256[:16]}"
    sampler = (
        optuna.samplers.RandomSampler(seed=seed) if space.sampler == "random" else optuna.samplers.TPESampler(seed=seed)
    )
    study = optuna.create_study(
        study_name=name,
        storage=url,
        load_if_exists=True,
        direction="maximize" if space.direction == "maximize" else "minimize",
        sampler=sampler,
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.min_resource, reduction_factor=space.reduction_factor
        ),
    )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted (the run was killed); resumed")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left running by a killed run
    meter.device_s = sum(float(t.user_attrs.get("charged_s", 0.0)) for t in study.get_trials(deepcopy=False))
    wall_before = float(study.user_attrs.get("wall_s", 0.0))
    if space.seconds_per_unit is not None:
        full = _STARTUP_S + space.max_resource * space.seconds_per_unit
        if full > meter.seconds_left() and not study.trials:
            raise SpecError(
                f"--budget {budget} buys {meter.seconds_left():.0f}s of {tgt.name}, less than one full-fidelity "
                f"trial ({full:.0f}s at {space.seconds_per_unit:g}s per unit × {space.max_resource}); raise the "
                "budget or lower resource.max. Nothing was spent."
            )
    ckpt_dir = Path(out or tempfile.mkdtemp(prefix="chipfit-explore-")) / "checkpoints"
    started, stopped_by = time.monotonic(), "budget"
    running: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    min_cost = _STARTUP_S + space.min_resource * (space.seconds_per_unit or 0.0)

    def wall() -> float:
        return wall_before + time.monotonic() - started

    while True:
        meter.wall_s = wall()
        running = [r for r in running if not _finish(study, meter, r, callback)]
        left = meter.seconds_left() - sum(time.monotonic() - r["t0"] for r in running)
        if len(running) < concurrency and left > min_cost:
            running.append(_start(study, space, url, name, ckpt_dir, ctx, left, max_trial_s, max_memory_mb))
            if callback:
                callback("start", running[-1], meter)
            continue
        if not running:
            break
        for r in running:  # never past the budget: a trial is cut when its share runs out
            if time.monotonic() - r["t0"] > r["limit_s"] + 0.2 and r["proc"].is_alive():
                r["proc"].kill()
                r["killed"] = True
        time.sleep(0.05)
    study.set_user_attr("wall_s", wall())
    meter.wall_s = wall()
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    return ExploreResult(meter, dict(states), _winner(study, ckpt_dir), name, stopped_by)


def _start(
    study: Any,
    space: ExploreSpace,
    url: str,
    name: str,
    ckpt_dir: Path,
    ctx: Any,
    left: float,
    max_trial_s: float | None,
    max_memory_mb: int | None,
) -> dict[str, Any]:
    from chipfit.explore.trial import run_trial

    trial = study.ask()
    config = space.sample(trial)
    limit = min(left, max_trial_s or math.inf)
    out = Path(tempfile.mkstemp(prefix="chipfit-trial-", suffix=".json")[1])
    job = {
        "space": str(space.path),
        "study": name,
        "storage": url,
        "trial_id": trial._trial_id,
        "config": config,
        "checkpoint": str(ckpt_dir / f"trial-{trial.number}.pkl"),
        "deadline": time.time() + limit,
        "max_memory_mb": max_memory_mb,
        "out": str(out),
    }
    proc = ctx.Process(target=run_trial, args=(job,), daemon=True)
    proc.start()
    return {"trial": trial, "proc": proc, "t0": time.monotonic(), "limit_s": limit, "out": out, "config": config}


def _finish(study: Any, meter: CostMeter, r: dict[str, Any], callback: Any) -> bool:
    """Tell the study how a finished trial ended and charge its time; False while it still runs."""
    import optuna

    if r["proc"].is_alive():
        return False
    seconds = time.monotonic() - r["t0"]
    meter.charge(seconds)
    trial = r["trial"]
    try:
        outcome = json.loads(r["out"].read_text() or "{}")
    except (OSError, ValueError):
        outcome = {}
    r["out"].unlink(missing_ok=True)
    status = outcome.get("status") or ("stopped" if r.get("killed") else "fail")
    default = "cut at the budget's limit" if r.get("killed") else f"the trial process died (exit {r['proc'].exitcode})"
    reason = outcome.get("reason") or default
    study._storage.set_trial_user_attr(trial._trial_id, "charged_s", seconds)
    if status == "complete":
        study.tell(trial, outcome["value"])
    elif status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        state = optuna.trial.TrialState.PRUNED if status == "stopped" else optuna.trial.TrialState.FAIL
        study.tell(trial, state=state)
    if callback:
        callback("done", r | {"status": status, "reason": reason}, meter)
    return True


def _winner(study: Any, ckpt_dir: Path) -> dict[str, Any] | None:
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    best = study.best_trial
    ckpt = ckpt_dir / f"trial-{best.number}.pkl"
    return {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "checkpoint": str(ckpt) if ckpt.exists() else None,
        "charged_s": best.user_attrs.get("charged_s"),
    }
