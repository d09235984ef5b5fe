"""What ``chipfit remat`` reports: the step as it is vs under chipfit's plan, both measured in the worker.

With ``batch``: both at that batch. With ``max_batch``: the largest batch each fits in the budget (the plain
step's first, then the plan's, starting above it), and the step times at the plain step's largest batch with
the plan found for the largest batch applied there, so that the ratio of the two times is the cost of the
recomputation alone. The times at the end are re-measured alternately (plain, plan, plain, plan) and the
faster of each pair kept, so a burst of load on the machine does not land on one side only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from chipfit.errors import SpecError
from chipfit.remat.batch import BatchResult, Calibration, Fitted, fit_plan, measure_plain, search
from chipfit.remat.measure import Probe, ProbeResult, Worker
from chipfit.remat.step import StepSpec

__all__ = ["RematReport", "run_remat"]

Progress = Callable[[str], None]
TIMING = {"min_steps": 3, "min_time_s": 0.3}


@dataclass(frozen=True)
class RematReport:
    budget_mb: float
    batch: int  # the batch both step times are measured at
    baseline_peak_mb: float | None  # measured: the plain step at ``batch``
    peak_mb: float | None  # measured: the plan's step (at ``max_batch`` with --max-batch)
    predicted_peak_mb: float | None  # the plan's prediction for that same step
    baseline_step_ms: float | None
    step_ms: float | None
    baseline_max_batch: int | None
    max_batch: int | None
    solver: str | None
    optimality_gap: float | None
    overhead: float | None  # predicted recompute fraction
    recomputed: tuple[str, ...]
    min_budget_mb: float | None
    resolves: int  # times the plan was re-solved against a tighter budget after its measurement
    fits: bool  # the plan's measured peak ≤ the budget
    device: str
    optimizer: str
    drift_mb: float  # resident memory left from earlier probes (the margin: see chipfit.remat.measure)
    notes: tuple[str, ...] = ()
    fallback: bool = False  # the plan is the least-memory fixed schedule: ``solver``'s own schedules did not fit

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recomputed"] = list(self.recomputed)
        d["notes"] = list(self.notes)
        d["measured_peak_mb"] = self.peak_mb
        d["step_ratio"] = self.step_ms / self.baseline_step_ms if self.step_ms and self.baseline_step_ms else None
        return d


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _least(results: list[ProbeResult], peaks: Sequence[ProbeResult] = ()) -> ProbeResult | None:
    """One measurement of repeated probes of the same step: the fastest time, and the least peak of these and
    ``peaks`` (a later probe can read a little high with what earlier ones left resident; chipfit.remat.measure)."""
    ok = [r for r in results if r.ok]
    if not ok:
        return results[0] if results else None
    fastest = min(ok, key=lambda r: r.step_ms or float("inf"))
    least = min(r.peak_mb for r in [*ok, *peaks] if r.ok and r.peak_mb is not None)
    return replace(fastest, peak_mb=least)


def _timed(worker: Worker, batch: int, plan: Any, earlier: list[ProbeResult]) -> tuple[ProbeResult, ProbeResult | None]:
    """Plain and planned steps at ``batch``, alternated twice (``earlier``: plain probes of it already made, whose
    peaks count too)."""
    plain: list[ProbeResult] = []
    planned: list[ProbeResult] = []
    for _ in range(2):
        plain.append(worker.probe(Probe(batch, **TIMING)))  # type: ignore[arg-type]
        if plan is not None:
            planned.append(worker.probe(Probe(batch, "plan", plan.to_json(), **TIMING)))  # type: ignore[arg-type]
    best = _least(plain, earlier)
    assert best is not None
    return best, _least(planned) if planned else None


def run_remat(
    spec: StepSpec,
    budget_mb: float,
    *,
    batch: int | None = None,
    find_max: bool = False,
    solver: str = "auto",
    time_limit_s: float = 30.0,
    device: str = "cpu",
    resolution: float = 1 / 32,
    progress: Progress | None = None,
) -> RematReport:
    if not budget_mb > 0:
        raise SpecError(f"--budget-mb must be a positive number of MB; got {budget_mb!r}.")
    if (batch is None) == (not find_max):
        raise SpecError("Give either --batch N (compare at one batch) or --max-batch (find the largest), not both.")
    if batch is not None and batch < 1:
        raise SpecError(f"--batch must be a positive integer; got {batch}.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SpecError(
                f"--device {device}: torch sees no CUDA device here ({torch.__version__}); use --device cpu."
            )
    module = spec.build_module().to(device)  # a bad FILE, function or return value: reported before measuring
    first = None
    if batch is not None:  # a budget below every schedule's minimum is reported before anything is measured
        from chipfit.remat.plan import plan

        _say(progress, f"tracing the step at batch {batch} and solving for {budget_mb:g} MB…")
        loss = spec.loss_fn() if spec.loss else None
        inputs = tuple(t.to(device) for t in spec.example_inputs(batch))
        first = plan(module, inputs, budget_mb, loss_fn=loss, solver=solver,
                     time_limit_s=time_limit_s, optimizer=spec.optimizer)  # fmt: skip
    cal = Calibration()
    with Worker(spec, device) as worker:

        def planned_at(b: int, strict: bool = False) -> Fitted:
            return fit_plan(worker, spec, b, budget_mb, solver=solver, time_limit_s=time_limit_s, module=module,
                            progress=progress, calibration=cal, strict=strict, device=device)  # fmt: skip

        if find_max:
            _say(progress, "searching the largest batch of the step as it is…")
            base = search(lambda b: measure_plain(worker, b, budget_mb), budget_mb, "as is", progress=progress,
                          resolution=resolution)  # fmt: skip
            _say(progress, "searching the largest batch with a plan (each batch: trace, solve, measure)…")
            planned = search(planned_at, budget_mb, "with plan", known_fit=base.best, resolution=2 * resolution,
                             progress=progress)  # fmt: skip
            if planned.max_batch == 0:  # not even batch 1: say which minimum it missed
                planned_at(1, strict=True)
            return _report_max(worker, spec, budget_mb, base, planned, device, progress)
        assert batch is not None and first is not None
        _say(progress, f"measuring the plan ({first.solver}, {len(first.recomputed)} units recomputed)…")
        fitted = fit_plan(worker, spec, batch, budget_mb, solver=solver, time_limit_s=time_limit_s, module=module,
                          progress=progress, first=first, device=device)  # fmt: skip
        _say(progress, f"timing the step as it is and with the plan at batch {batch}…")
        t_plain, t_plan = _timed(worker, batch, fitted.plan, [])
        return _report(spec, budget_mb, batch, t_plain, t_plan, fitted, None, None, device)


def _report_max(
    worker: Worker,
    spec: StepSpec,
    budget_mb: float,
    base: BatchResult,
    planned: BatchResult,
    device: str,
    progress: Progress | None,
) -> RematReport:
    notes = []
    at = base.max_batch or 1
    if not base.max_batch:
        notes.append(f"the step as it is does not fit {budget_mb:g} MB even at batch 1; times compared at batch 1")
    best = planned.best
    plan = best.plan if best else None
    _say(progress, f"timing both steps at batch {at}…")
    earlier = [f.result for f in base.tried if f.batch == at and f.result is not None]
    t_plain, t_plan = _timed(worker, at, plan, earlier)
    if plan is not None and t_plan is None:
        notes.append(f"the plan for batch {planned.max_batch} could not run at batch {at}; step_ms is at its own batch")
        t_plan = best.result if best else None
    if plan is None:
        t_plan = t_plain
        notes.append("no batch beyond the plain step's largest fits with recomputation; the plan is the step as it is")
    return _report(spec, budget_mb, at, t_plain, t_plan, best, base.max_batch, planned.max_batch, device, tuple(notes))


def _report(
    spec: StepSpec,
    budget_mb: float,
    batch: int,
    t_plain: ProbeResult,
    t_plan: ProbeResult | None,
    fitted: Fitted | None,
    baseline_max: int | None,
    plan_max: int | None,
    device: str,
    notes: tuple[str, ...] = (),
) -> RematReport:
    p = fitted.plan if fitted else None
    measured = fitted.result if fitted and fitted.result else None
    base_peak = t_plain.peak_mb if t_plain.ok else None
    drift = max([r.drift_mb for r in (t_plain, t_plan, measured) if r is not None], default=0.0)
    return RematReport(
        budget_mb=budget_mb,
        batch=batch,
        baseline_peak_mb=base_peak,
        peak_mb=measured.peak_mb if measured else base_peak,
        predicted_peak_mb=p.peak_mb if p is not None else None,
        baseline_step_ms=t_plain.step_ms if t_plain.ok else None,
        step_ms=t_plan.step_ms if t_plan is not None and t_plan.ok else None,
        baseline_max_batch=baseline_max,
        max_batch=plan_max,
        solver=p.solver if p is not None else "none",
        optimality_gap=p.optimality_gap if p is not None else None,
        overhead=p.overhead if p is not None else 0.0,
        recomputed=tuple(p.recomputed) if p is not None else (),
        min_budget_mb=p.min_budget_mb if p is not None else None,
        resolves=fitted.resolves if fitted else 0,
        fits=bool(fitted.fits) if fitted else bool(base_peak is not None and base_peak <= budget_mb),
        device=device,
        optimizer=spec.optimizer,
        drift_mb=drift,
        notes=notes,
        fallback=bool(p.fallback) if p is not None else False,
    )
