"""What a trainable sees (``TrialContext``) and the process that runs one trial.

A trainable is ``def train(ctx): ...``. It reads ``ctx.config`` (the sampled hyperparameters), may suggest
more with ``ctx.suggest_int/float/categorical`` (define-by-run, Optuna's API), trains in steps up to
``ctx.max_resource``, calls ``ctx.report(metric, step)`` after each (ASHA stops it there when it falls
behind its rung), and saves/restores with ``ctx.checkpoint(state)`` / ``ctx.load_checkpoint()``.

Each trial runs in its own process, so a trainable that crashes, runs out of memory (``max_memory_mb``) or
hangs (its time is cut at the budget's limit) fails alone, with the reason recorded on the trial.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["BudgetStop", "TrialContext", "run_trial"]


class BudgetStop(Exception):
    """Raised by ``report`` when the trial's share of the budget is spent."""


class TrialContext:
    def __init__(self, trial: Any, config: dict[str, Any], max_resource: int, ckpt: Path, deadline: float) -> None:
        self.trial = trial
        self.config = dict(config)
        self.max_resource = max_resource
        self.number = trial.number
        self._ckpt = ckpt
        self._start = time.monotonic()
        self._deadline = deadline  # wall clock (time.time()) at which the budget's share of this trial ends
        self.reports: list[tuple[int, float]] = []

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return int(self.trial.suggest_int(name, low, high, log=log))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, choices)

    def report(self, metric: float, step: int) -> None:
        """Record the validation metric after ``step`` resource units; stops the trial when ASHA prunes it."""
        import optuna

        value = float(metric)
        if not math.isfinite(value):
            raise ValueError(f"the trainable reported a non-finite metric ({metric!r}) at step {step}")
        self.trial.report(value, int(step))
        self.reports.append((int(step), value))
        elapsed = time.monotonic() - self._start
        self.trial.set_user_attr("charged_s", elapsed)  # stored at once: a killed run still counts its cost
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"below its rung at step {step}")
        if time.time() > self._deadline:
            raise BudgetStop("the budget left is spent")

    def checkpoint(self, state: Any) -> Path:
        """Save ``state`` (anything picklable; torch state_dicts included) as this trial's checkpoint."""
        self._ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._ckpt.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(state, f)
        os.replace(tmp, self._ckpt)
        return self._ckpt

    def load_checkpoint(self) -> Any:
        """The last checkpoint of this trial, or None."""
        if not self._ckpt.exists():
            return None
        with open(self._ckpt, "rb") as f:
            return pickle.load(f)


def run_trial(job: dict[str, Any]) -> None:
    """Child process: load the study, run the trainable for one trial, write the outcome to ``job['out']``."""
    import optuna

    from chipfit.explore.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.get("max_memory_mb"):
        import resource

        cap = int(job["max_memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out: dict[str, Any] = {"status": "fail"}
    try:
        space = load_space(job["space"])
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.min_resource, reduction_factor=space.reduction_factor
        )
        study = optuna.load_study(study_name=job["study"], storage=job["storage"], pruner=pruner)
        trial = optuna.trial.Trial(study, job["trial_id"])
        ctx = TrialContext(trial, job["config"], space.max_resource, Path(job["checkpoint"]), job["deadline"])
        fn = space.load_trainable()
        fn(ctx)
        if not ctx.reports:
            raise ValueError("the trainable returned without calling ctx.report(metric, step)")
        best = max if space.direction == "maximize" else min
        out = {"status": "complete", "value": best(v for _, v in ctx.reports), "steps": ctx.reports[-1][0]}
    except optuna.TrialPruned as exc:
        out = {"status": "pruned", "reason": str(exc)}
    except BudgetStop as exc:
        out = {"status": "stopped", "reason": str(exc)}
    except MemoryError:
        out = {"status": "fail", "reason": f"out of memory (max_memory_mb {job.get('max_memory_mb')})"}
    except BaseException as exc:  # everything a trainable can raise is recorded on its trial
        out = {"status": "fail", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    Path(job["out"]).write_text(json.dumps(out))
