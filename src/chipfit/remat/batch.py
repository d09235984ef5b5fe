"""The largest batch whose training step fits a memory budget, measured, with and without a remat plan.

``max_batch(module_fn, batch_fn, budget_mb)`` (or :func:`search` on a :class:`~chipfit.remat.step.StepSpec`)
grows the batch exponentially from ``start`` until a step does not fit, then bisects between the last batch
that fitted and the first that did not, to within ``resolution`` of the answer. "Fits" is measured: the step
runs in the isolated worker (:mod:`chipfit.remat.measure`) and its peak is compared with the budget. With
``schedule="plan"`` each batch gets chipfit's plan for the budget (:func:`fit_plan`): solved, measured, and
re-solved against a tighter budget when the measured peak exceeds the budget, so what is reported fitted as
measured, not only as predicted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from chipfit.errors import SpecError
from chipfit.remat.measure import Probe, ProbeResult, Worker
from chipfit.remat.step import StepSpec, ref_of

__all__ = ["BatchResult", "Calibration", "Fitted", "fit_plan", "max_batch", "search"]

Progress = Callable[[str], None]
# a search's probe: one step with SGD (no state between steps); with Adam one more, after its state is made
QUICK = {"min_steps": 1, "min_time_s": 0.0}
QUICK_SGD = {"min_steps": 0, "min_time_s": 0.0}


def _quick(worker: Worker) -> dict[str, Any]:
    return QUICK_SGD if getattr(worker.step, "optimizer", "") == "sgd" else QUICK


RESOLVES = 3  # re-solves with a tighter budget before a batch counts as not fitting


@dataclass(frozen=True)
class Fitted:
    """One batch tried under a schedule: the measurement, and the plan that was measured (``schedule="plan"``)."""

    batch: int
    fits: bool
    result: ProbeResult | None
    plan: Any = None  # chipfit.remat.Plan
    resolves: int = 0  # times the plan was re-solved with a tighter budget
    reason: str = ""


@dataclass(frozen=True)
class BatchResult:
    """The largest fitting batch (0: not even ``start``), its measurement and plan, and every batch tried."""

    budget_mb: float
    schedule: str
    max_batch: int
    best: Fitted | None
    tried: tuple[Fitted, ...] = field(default_factory=tuple)

    @property
    def plan(self) -> Any:
        return self.best.plan if self.best else None

    @property
    def peak_mb(self) -> float | None:
        return self.best.result.peak_mb if self.best and self.best.result else None

    @property
    def step_ms(self) -> float | None:
        return self.best.result.step_ms if self.best and self.best.result else None


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _describe(f: Fitted, budget_mb: float) -> str:
    r = f.result
    if r is None or not r.ok:
        return f"batch {f.batch}: does not fit ({f.reason or (r.error if r else '')})"
    verdict = "fits" if f.fits else "does not fit"
    extra = f", plan re-solved {f.resolves}×" if f.resolves else ""
    sign = "≤" if f.fits else ">"
    return (
        f"batch {f.batch}: peak {r.peak_mb:.1f} MB {sign} {budget_mb:g} MB, {verdict} ({r.step_ms:.1f} ms/step{extra})"
    )


def measure_plain(worker: Worker, batch: int, budget_mb: float, probe: Probe | None = None) -> Fitted:
    """The step as it is (or under ``probe``'s schedule) at ``batch``: fits when its measured peak ≤ budget."""
    r = worker.probe(replace(probe, batch=batch) if probe else Probe(batch, **_quick(worker)))
    fits = r.ok and r.peak_mb is not None and r.peak_mb <= budget_mb
    return Fitted(batch, fits, r, reason="" if r.ok else r.error)


@dataclass
class Calibration:
    """How far the measured peaks of this step's plans exceeded their predictions (the allocator's slack and
    what the trace does not see, a few MB on CPU): later plans of the same search aim that much lower, which
    saves a re-solve per batch."""

    excess_mb: float = 0.0


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def fit_plan(
    worker: Worker,
    spec: StepSpec,
    batch: int,
    budget_mb: float,
    *,
    solver: str = "auto",
    time_limit_s: float = 30.0,
    module: Any = None,
    progress: Progress | None = None,
    strict: bool = False,
    first: Any = None,
    calibration: Calibration | None = None,
    device: str = "cpu",
) -> Fitted:
    """chipfit's plan for ``batch`` under ``budget_mb``, measured; re-solved with a tighter budget (by the
    measured excess, plus 1%) while the measured peak exceeds the budget, at most ``RESOLVES`` times.
    ``strict``: a budget below every schedule's minimum raises ``BudgetTooSmall`` (else: does not fit);
    ``first``: the plan already solved for ``budget_mb`` at this batch; ``calibration``: the excess seen so
    far (the first solve aims below the budget by it, and what this batch shows is added); ``device``: where
    ``module`` is and the plan is traced (the worker measures on its own device)."""
    from chipfit.remat.plan import BudgetTooSmall, plan

    module = module if module is not None else spec.build_module().to(device)
    inputs = tuple(t.to(device) for t in spec.example_inputs(batch))
    loss = spec.loss_fn() if spec.loss else None
    cal = calibration if calibration is not None else Calibration()
    target = budget_mb - cal.excess_mb if first is None else budget_mb
    last: Fitted | None = None
    for k in range(RESOLVES + 1):
        try:
            if k == 0 and first is not None:
                p = first
            else:
                p = plan(module, inputs, target, loss_fn=loss, solver=solver, time_limit_s=time_limit_s,
                         optimizer=spec.optimizer)  # fmt: skip
        except BudgetTooSmall as exc:
            _free(device)
            if strict and k == 0:
                raise
            if k == 0 and target < budget_mb:  # the calibrated aim is below every schedule: try the budget itself
                target = budget_mb
                continue
            why = f"no schedule fits {target:.1f} MB (minimum {exc.minimum_mb:.1f} MB)"
            return Fitted(batch, False, last.result if last else None, last.plan if last else None, k, why)
        except RuntimeError as exc:  # the trace runs the plain step at this batch: it may not fit the device
            if "out of memory" not in str(exc).lower():
                raise
            _free(device)
            why = f"tracing the plain step at batch {batch} ran out of {device} memory, so it cannot be planned"
            return Fitted(batch, False, last.result if last else None, last.plan if last else None, k, why)
        _free(device)  # the trace's memory, cached by torch's allocator, back before the worker measures
        r = worker.probe(Probe(batch, "plan", p.to_json(), **_quick(worker)))
        if not r.ok or r.peak_mb is None:
            return Fitted(batch, False, r, p, k, r.error)
        cal.excess_mb = max(cal.excess_mb, r.peak_mb - p.peak_mb)
        last = Fitted(batch, r.peak_mb <= budget_mb, r, p, k)
        if last.fits:
            return last
        excess = r.peak_mb - budget_mb
        _say(
            progress,
            f"batch {batch}: measured {r.peak_mb:.1f} MB > {budget_mb:g} MB; re-solving {excess:.1f} MB tighter",
        )
        target = min(target, p.peak_mb) - excess - 0.01 * budget_mb
        if target <= 0:
            break
    return Fitted(
        batch, False, last.result if last else None, last.plan if last else None, RESOLVES, "over budget as measured"
    )


def _growth(f: Fitted, budget_mb: float) -> int:
    """How much the exponential phase multiplies the batch: 2, or up to 8 while the peak is far below the budget."""
    peak = f.result.peak_mb if f.result and f.result.peak_mb else 0.0
    return int(min(8.0, max(2.0, budget_mb / peak))) if peak > 0 else 2


def search(
    try_batch: Callable[[int], Fitted],
    budget_mb: float,
    schedule: str,
    *,
    start: int = 1,
    known_fit: Fitted | None = None,
    resolution: float = 1 / 32,
    limit: int = 1 << 22,
    progress: Progress | None = None,
) -> BatchResult:
    """Exponential then binary search for the largest batch ``try_batch`` says fits. ``known_fit``: a batch
    known to fit (the search starts above it); ``resolution``: stop when the bracket is narrower than this
    fraction of the answer (1 batch at least)."""
    tried: list[Fitted] = []
    best = known_fit
    lo = known_fit.batch if known_fit else 0
    hi: int | None = None

    def attempt(b: int) -> bool:
        nonlocal best
        f = try_batch(b)
        tried.append(f)
        _say(progress, f"{schedule}: {_describe(f, budget_mb)}")
        if f.fits and (best is None or b > best.batch):
            best = f
        return f.fits

    b = max(start, 2 * lo) if lo else start
    while hi is None:
        if b > limit:
            raise SpecError(f"the step still fits {budget_mb:g} MB at batch {lo}; the search stops at {limit}.")
        if attempt(b):
            lo, b = b, b * _growth(tried[-1], budget_mb)
        else:
            hi = b
    if lo == 0:
        return BatchResult(budget_mb, schedule, 0, None, tuple(tried))
    while hi - lo > max(1, int(lo * resolution)):
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return BatchResult(budget_mb, schedule, lo, best, tuple(tried))


def max_batch(
    module_fn: Callable[[], Any],
    batch_fn: Callable[[int], Any],
    budget_mb: float,
    *,
    loss_fn: Callable[[Any], Any] | None = None,
    optimizer: Literal["sgd", "adam"] = "sgd",
    schedule: Literal["plan", "none"] = "plan",
    solver: str = "auto",
    time_limit_s: float = 30.0,
    start: int = 1,
    resolution: float = 1 / 32,
    device: str = "cpu",
    progress: Progress | None = None,
) -> BatchResult:
    """The largest batch whose training step (``module_fn()`` on ``batch_fn(batch)``, the mean of the outputs
    or ``loss_fn(outputs)``, backward, ``optimizer``'s step) fits ``budget_mb`` as measured in a worker process,
    under chipfit's plan (``schedule="plan"``) or as it is (``"none"``). The functions must be defined at the
    top level of a Python file: the worker imports them by name."""
    if not budget_mb > 0:
        raise SpecError(f"budget_mb must be a positive number of MB; got {budget_mb!r}.")
    spec = StepSpec(
        ref_of(module_fn, "module_fn"),
        loss=ref_of(loss_fn, "loss_fn") if loss_fn else None,
        optimizer=optimizer,
        batch_fn=ref_of(batch_fn, "batch_fn"),
    )
    with Worker(spec, device) as worker:
        if schedule == "none":
            return search(lambda b: measure_plain(worker, b, budget_mb), budget_mb, "none", start=start,
                          resolution=resolution, progress=progress)  # fmt: skip
        module = spec.build_module()
        cal = Calibration()
        return search(
            lambda b: fit_plan(
                worker, spec, b, budget_mb, solver=solver, time_limit_s=time_limit_s, module=module, calibration=cal
            ),
            budget_mb,
            "plan",
            start=start,
            resolution=resolution,
            progress=progress,
        )
