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

With ``--train-memory-mb``, ``model = ctx.remat(model, x_batch)`` returns the module to train with: itself when
its step fits, else the module under a remat plan (activations recomputed; same parameters), and the trial is
rejected when no plan fits (with the minimum). The plan is on the trial (user attribute ``remat``), and its
predicted recompute overhead is charged with the trial's units.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from chipfit.explore.checkpoint import read_checkpoint
from chipfit.explore.clock import SYSTEM_CLOCK, Clock
from chipfit.explore.job import TrialJob, TrialOutcome, dumps, load_job

__all__ = [
    "BudgetStop",
    "Rejected",
    "TrialContext",
    "read_checkpoint",
    "run_trial",
    "run_trial_json",
    "run_trial_to_file",
]


class BudgetStop(Exception):
    """Raised by ``report`` when the trial's share of the budget (or the deadline) is spent."""


class Rejected(Exception):
    """Raised when the trial's model cannot meet the hardware bound (predicted or measured)."""


class TrialContext:
    def __init__(self, trial: Any, job: TrialJob, space: Any, clock: Clock = SYSTEM_CLOCK) -> None:
        self.trial = trial
        self.space = space
        self.job = job  # what the study asked of this trial (its bound, limits, checkpoint path)
        self.config = dict(job.config)
        self.max_resource = int(space.max_resource)
        self.number = trial.number
        self._clock = clock
        self._ckpt = Path(job.checkpoint)
        self._start = clock.monotonic()
        self.threads = 0
        self.reports: list[tuple[int, float]] = []
        self.model: Any = None  # the last model passed to report()
        self.checks: list[dict[str, Any]] = []
        self.remat_overhead: float | None = None  # the predicted recompute fraction of ctx.remat's plan
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

    def remat(self, module: Any, *example_inputs: Any, loss_fn: Any = None, optimizer: str = "adam") -> Any:
        """The module to train within ``--train-memory-mb``: ``module`` itself when there is no such bound or its
        step (on ``example_inputs``, one training batch) fits; else ``module`` under chipfit's remat plan (same
        parameters: an optimizer built on ``module.parameters()`` keeps working). No plan fits: the trial is
        rejected, naming the minimum. A module that cannot be traced (a TorchScript part: no module hooks) trains
        as it is, with the reason on the trial. ``loss_fn(outputs)`` defaults to the mean of the outputs."""
        budget = self.job.train_memory_mb
        if budget is None:
            return module
        from chipfit.remat import BudgetTooSmall, RematError, apply, plan

        try:
            p = plan(module, tuple(example_inputs), budget, loss_fn=loss_fn, optimizer=optimizer)
        except BudgetTooSmall as exc:
            raise Rejected(
                f"its training step needs at least {exc.minimum_mb:.4g} MB with recomputation; "
                f"--train-memory-mb is {budget:g}"
            ) from None
        except (RematError, RuntimeError) as exc:  # one chipfit cannot trace (TorchScript): trains as it is, said so
            self.trial.set_user_attr("remat", {"error": f"not planned: {type(exc).__name__}: {exc}"[:500]})
            return module
        self.trial.set_user_attr("remat", {k: v for k, v in p.to_json().items() if k != "recomputed"})
        if not p.recomputed:
            return module
        self.remat_overhead = float(p.overhead)
        return apply(module, p)

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
        self.trial.set_user_attr("reported_s", self._clock.monotonic() - self._start)  # the measured pace
        if first and self.job.bound is not None and self.job.bound.measure:
            self._check_measured(model)
        if int(step) < self.max_resource and self.trial.should_prune():  # trained to the end: complete
            raise optuna.TrialPruned(f"below its rung at step {step}")
        if self._clock.time() > self.job.deadline:
            raise BudgetStop("the budget left is spent")
        if self.job.max_units is not None and self.max_resource > int(step) >= self.job.max_units:
            raise BudgetStop(f"the budget's resource units are spent (this trial could train {self.job.max_units})")
        self._apply_threads()

    def checkpoint(self, state: Any) -> Path:
        """Save ``state`` as this trial's checkpoint, with ``torch.save``. It is read back with
        ``weights_only=True``: tensors, numbers, strings and containers of them (state_dicts, optimizer
        states) come back; another object needs ``--trust-pickle`` to be read."""
        import torch

        self._ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._ckpt.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self._ckpt)
        return self._ckpt

    def load_checkpoint(self) -> Any:
        """The last checkpoint of this trial, or None."""
        if not self._ckpt.exists():
            return None
        return read_checkpoint(self._ckpt, trust_pickle=self.job.trust_pickle)

    # -- internals -------------------------------------------------------------------------------------------
    def _apply_threads(self) -> None:
        """Read the cores this trial holds (the scheduler may give it more) and apply them to torch."""
        n = self.job.threads
        tf = self.job.threads_file
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


def _open(job: TrialJob, space: Any) -> Any:
    """The study's live trial of ``job`` (Optuna's public API: the trial found by its number)."""
    import optuna

    from chipfit.explore.studies import open_storage, pruner, reopen_trial, sampler

    storage = open_storage(job.storage, created=True)
    # parameters the trainable suggests itself are drawn here, in the trial's process: seeded by the study's
    # seed and the trial's number (Optuna's default would be an unseeded TPE: runs could not be repeated)
    seeded = sampler(space, job.seed * 100_003 + job.trial_number)
    study = optuna.load_study(study_name=job.study, storage=storage, pruner=pruner(space, job.prune), sampler=seeded)
    return reopen_trial(study, storage, job.trial_number)


def run_trial(job: TrialJob, trial: Any = None, clock: Clock = SYSTEM_CLOCK) -> TrialOutcome:
    """Run the trainable for one trial and return its outcome (never raises). ``trial`` is the study's live
    Optuna trial when the caller has it; otherwise it is opened from the job's storage."""
    import optuna

    from chipfit.explore.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.max_memory_mb:
        import resource

        cap = int(job.max_memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    ctx: TrialContext | None = None
    try:
        space = load_space(job.space)
        ctx = TrialContext(trial if trial is not None else _open(job, space), job, space, clock)
        out = _train(ctx, job)
    except optuna.TrialPruned as exc:
        out = TrialOutcome("pruned", reason=str(exc))
    except BudgetStop as exc:
        out = TrialOutcome("stopped", reason=str(exc))
    except Rejected as exc:
        out = TrialOutcome("rejected", reason=str(exc))
    except MemoryError:
        out = TrialOutcome.failed(f"out of memory (trial memory cap {job.max_memory_mb} MB)")
    except BaseException as exc:  # everything a trainable can raise is recorded on its trial
        out = TrialOutcome.failed(f"{type(exc).__name__}: {exc}", traceback.format_exc()[-3000:])
    if ctx is None:
        return out
    steps = out.steps if out.steps is not None else (ctx.reports[-1][0] if ctx.reports else 0)
    return replace(
        out, threads=ctx.threads, steps=steps, remat_overhead=ctx.remat_overhead
    )  # steps: what a budget in resource units is charged


def _train(ctx: TrialContext, job: TrialJob) -> TrialOutcome:
    if job.bound is not None:
        from chipfit.explore.constraint import check_before_training

        check = check_before_training(ctx)
        if check is not None:
            ctx.trial.set_user_attr("hardware", check)
            if not check["ok"]:
                raise Rejected(check["detail"])
    returned = ctx.space.load_trainable()(ctx)
    if not ctx.reports:
        raise ValueError("the trainable returned without calling ctx.report(metric, step)")
    steps, value = ctx.reports[-1]
    onnx, reason = None, ""
    if job.export:
        from chipfit.explore.constraint import export_model

        try:
            onnx = export_model(ctx, returned if returned is not None else ctx.model)
        except Exception as exc:  # the trial's result stands; only its delivery is not possible
            reason = f"trained, but its model could not be exported to ONNX: {type(exc).__name__}: {exc}"
    return TrialOutcome("complete", reason=reason, value=value, steps=steps, onnx=onnx)


def run_trial_json(job: str) -> str:
    """A trial from its serialised job to its serialised outcome (what a Ray task runs)."""
    return dumps(run_trial(load_job(job)))


def run_trial_to_file(job: str) -> None:
    """Child-process entry point: the outcome goes to the job's ``outcome_file``."""
    parsed = load_job(job)
    text = dumps(run_trial(parsed))
    if parsed.outcome_file is None:
        raise ValueError("run_trial_to_file needs a job with its outcome_file set (the local runner sets it).")
    Path(parsed.outcome_file).write_text(text)
