"""What a trainable sees (``TrialContext``) and the process that runs one trial.

A trainable is ``def train(ctx): ...``. It reads ``ctx.config`` (the sampled hyperparameters), may suggest
more with ``ctx.suggest_int/float/categorical`` (define-by-run, Optuna's API), trains in steps up to
``ctx.max_resource``, calls ``ctx.report(metric, step)`` after each (ASHA stops it there when it falls
behind its rung), and saves/restores with ``ctx.checkpoint(state)`` / ``ctx.load_checkpoint()``. It may
return its trained ``torch.nn.Module`` (or pass it as ``ctx.report(..., model=m)``): with a hardware bound
or an ``--out`` folder, that model is exported so the winner can be delivered through ``fit``.

Each trial runs in its own process (or Ray task), so a trainable that crashes, runs out of memory
(``trial_memory_mb``) or hangs (its time is cut at the budget's limit) fails alone, with the reason recorded.
``ctx.threads`` is the number of cores the trial holds; chipfit applies it to torch, and in deadline mode a
leading trial is given more cores at its next report when others stop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["BudgetStop", "Rejected", "TrialContext", "run_trial", "run_trial_to_file"]


class BudgetStop(Exception):
    """Raised by ``report`` when the trial's share of the budget (or the deadline) is spent."""


class Rejected(Exception):
    """Raised when the trial's model cannot meet the hardware bound (predicted or measured)."""


class TrialContext:
    def __init__(self, trial: Any, job: dict[str, Any], space: Any) -> None:
        self.trial = trial
        self.space = space
        self.config = dict(job["config"])
        self.max_resource = int(space.max_resource)
        self.number = trial.number
        self._job = job
        self._ckpt = Path(job["checkpoint"])
        self._start = time.monotonic()
        self._deadline = float(job["deadline"])  # wall clock (time.time()) at which this trial's share ends
        self.threads = 0
        self.reports: list[tuple[int, float]] = []
        self.model: Any = None  # the last model passed to report()
        self.checks: list[dict[str, Any]] = []
        self._apply_threads()

    # -- define-by-run suggestions (Optuna's API) ------------------------------------------------------------
    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return int(self.trial.suggest_int(name, low, high, log=log))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, choices)

    def resolve(self, ref: str) -> Any:
        """A ``file.py:function`` reference relative to the space file (used by the built-in recipes)."""
        return self.space.load_function(ref)

    # -- progress --------------------------------------------------------------------------------------------
    def report(self, metric: float, step: int, model: Any = None) -> None:
        """Record the validation metric after ``step`` resource units; stops the trial when ASHA prunes it,
        when its share of the budget is spent, or (first report, with a hardware bound) when its model
        misses the bound as measured."""
        import optuna

        value = float(metric)
        if not math.isfinite(value):
            raise ValueError(f"the trainable reported a non-finite metric ({metric!r}) at step {step}")
        if model is not None:
            self.model = model
        first = not self.reports
        self.trial.report(value, int(step))
        self.reports.append((int(step), value))
        self._charge()
        if first and self._job.get("bound") and self._job["bound"].get("measure"):
            self._check_measured(model)
        if int(step) < self.max_resource and self.trial.should_prune():  # trained to the end: complete
            raise optuna.TrialPruned(f"below its rung at step {step}")
        if time.time() > self._deadline:
            raise BudgetStop("the budget left is spent")
        self._apply_threads()

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

    # -- internals -------------------------------------------------------------------------------------------
    def _charge(self) -> None:
        elapsed = time.monotonic() - self._start
        self.trial.set_user_attr("charged_s", elapsed)  # stored at once: a killed run still counts its cost
        self.trial.set_user_attr("charged_device_s", elapsed * float(self._job.get("share", 1.0)))

    def _apply_threads(self) -> None:
        """Read the cores this trial holds (the scheduler may give it more) and apply them to torch."""
        n = int(self._job.get("threads") or 1)
        tf = self._job.get("threads_file")
        if tf:
            with contextlib.suppress(OSError, ValueError):
                n = int(Path(tf).read_text().strip() or n)
        if n != self.threads:
            if self.threads and n > self.threads:
                self.trial.set_user_attr("threads_used", n)  # the deadline scheduler gave it more cores
            self.threads = n
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(n)

    def _check_measured(self, model: Any) -> None:
        from chipfit.explore.constraint import check_after_first_report

        check = check_after_first_report(self, model)
        self.checks.append(check)
        self.trial.set_user_attr("hardware", check)
        if not check["ok"]:
            raise Rejected(check["detail"])


def run_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Load the study, run the trainable for one trial and return its outcome (never raises)."""
    import optuna

    from chipfit.explore.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.get("max_memory_mb"):
        import resource

        cap = int(job["max_memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out: dict[str, Any] = {"status": "fail"}
    ctx: TrialContext | None = None
    try:
        space = load_space(job["space"])
        pruner = (
            optuna.pruners.SuccessiveHalvingPruner(
                min_resource=space.min_resource, reduction_factor=space.reduction_factor
            )
            if job.get("prune", True)
            else optuna.pruners.NopPruner()
        )
        study = optuna.load_study(study_name=job["study"], storage=job["storage"], pruner=pruner)
        trial = optuna.trial.Trial(study, job["trial_id"])
        ctx = TrialContext(trial, job, space)
        if job.get("bound"):
            from chipfit.explore.constraint import check_before_training

            check = check_before_training(ctx)
            if check is not None:
                trial.set_user_attr("hardware", check)
                if not check["ok"]:
                    raise Rejected(check["detail"])
        returned = space.load_trainable()(ctx)
        if not ctx.reports:
            raise ValueError("the trainable returned without calling ctx.report(metric, step)")
        out = {"status": "complete", "value": ctx.reports[-1][1], "steps": ctx.reports[-1][0]}
        if job.get("export"):
            from chipfit.explore.constraint import export_model

            try:
                out["onnx"] = export_model(ctx, returned if returned is not None else ctx.model)
            except Exception as exc:  # the trial's result stands; only its delivery is not possible
                out["reason"] = f"trained, but its model could not be exported to ONNX: {type(exc).__name__}: {exc}"
    except optuna.TrialPruned as exc:
        out = {"status": "pruned", "reason": str(exc)}
    except BudgetStop as exc:
        out = {"status": "stopped", "reason": str(exc)}
    except Rejected as exc:
        out = {"status": "rejected", "reason": str(exc)}
    except MemoryError:
        out = {"status": "fail", "reason": f"out of memory (trial memory cap {job.get('max_memory_mb')} MB)"}
    except BaseException as exc:  # everything a trainable can raise is recorded on its trial
        out = {"status": "fail", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    if ctx is not None:
        out["threads"] = ctx.threads
    return out


def run_trial_to_file(job: dict[str, Any]) -> None:
    """Child-process entry point: the outcome goes to ``job['out']``."""
    out = run_trial(job)
    Path(job["out"]).write_text(json.dumps(out, default=str))
