"""Selection: constraints → feasible set → Pareto front → one winner; near-misses with what they missed.

Quality is ``accuracy`` when labels were given, else ``fidelity``. ``accuracy_drop`` is the reference
candidate's accuracy minus the candidate's (for MSE, the increase), so a negative drop is an improvement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chipfit.measure.measurement import Measurement
from chipfit.measure.quality import higher_is_better
from chipfit.search.space import Candidate
from chipfit.spec import CONSTRAINTS, Spec

__all__ = ["CandidateResult", "Violation", "choose_winner", "evaluate", "near_misses", "pareto_front"]


@dataclass(frozen=True)
class Violation:
    constraint: str
    bound: float
    value: float | None
    excess: float | None  # how far past the bound, in the constraint's unit (None: value not measured)
    relative: float | None  # excess / bound

    def describe(self) -> str:
        c = CONSTRAINTS[self.constraint]
        if self.value is None:
            return f"{self.constraint}: not measured"
        sign = ">" if c.kind == "max" else "<"
        rel = f", {self.relative:+.0%}" if self.relative is not None else ""
        return f"{c.metric} {self.value:.4g}{c.unit} {sign} {self.bound:g}{c.unit} (by {self.excess:.3g}{c.unit}{rel})"


@dataclass
class CandidateResult:
    candidate: Candidate
    measurement: Measurement
    source: str = "measured"  # measured | stored | skipped
    violations: list[Violation] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.measurement.ok and not self.violations

    def metric(self, key: str) -> Any:
        return self.measurement.metrics.get(key)

    def quality(self) -> float | None:
        return self.metric("accuracy") if self.metric("accuracy") is not None else self.metric("fidelity")

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement.metrics
        return {
            "id": self.candidate.id,
            "label": self.candidate.label(),
            **self.candidate.to_dict(),
            "status": self.measurement.status,
            "source": self.source,
            "feasible": self.feasible,
            "error": self.measurement.error,
            **{
                k: m.get(k)
                for k in ("p50_ms", "p90_ms", "p99_ms", "throughput", "peak_memory_mb", "size_mb", "usd_per_1m")
            },
            "energy_mj": m.get("energy_mj"),
            "energy_method": m.get("energy_method"),
            "quality": {
                k: m.get(k)
                for k in ("accuracy", "accuracy_metric", "accuracy_drop", "fidelity", "fidelity_metric")
                if m.get(k) is not None
            },
            "metrics": m,
            "violations": [v.__dict__ | {"text": v.describe()} for v in self.violations],
            "notes": self.measurement.notes,
        }


def evaluate(results: list[CandidateResult], spec: Spec) -> None:
    """Derive accuracy_drop from the reference, cost and energy on this machine's target, and fill each
    result's violations (in place)."""
    from chipfit.hardware.cost import cost_energy
    from chipfit.hardware.local import local_target

    target, _ = local_target(measure=False)
    ref = next((r for r in results if r.candidate.reference and r.measurement.ok), None)
    base = ref.metric("accuracy") if ref else None
    for r in results:
        m = r.measurement.metrics
        if r.measurement.ok:
            m.update(cost_energy(m, target, r.candidate.options))
        acc, metric = m.get("accuracy"), m.get("accuracy_metric")
        if acc is not None and base is not None and metric:
            m["accuracy_drop"] = (base - acc) if higher_is_better(metric) else (acc - base)
        r.violations = _violations(m, spec) if r.measurement.ok else []


def _violations(metrics: dict[str, Any], spec: Spec) -> list[Violation]:
    out = []
    for name, bound in spec.bounds().items():
        c = CONSTRAINTS[name]
        value = metrics.get(c.metric)
        if value is None:
            out.append(Violation(name, bound, None, None, None))
            continue
        excess = value - bound if c.kind == "max" else bound - value
        if excess > 1e-12:
            out.append(Violation(name, bound, float(value), float(excess), excess / bound if bound else None))
    return out


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _pareto_key(r: CandidateResult) -> tuple[float, ...]:
    q = r.quality()
    hib = higher_is_better(r.metric("accuracy_metric")) if r.metric("accuracy") is not None else True
    qk = 0.0 if q is None else (-q if hib else q)
    return (r.metric("p50_ms") or 0.0, qk, r.metric("peak_memory_mb") or 0.0)


def pareto_front(results: list[CandidateResult]) -> list[CandidateResult]:
    """Non-dominated ok results on (p50 latency ↓, quality ↑, peak memory ↓)."""
    ok = [r for r in results if r.measurement.ok]
    keys = [_pareto_key(r) for r in ok]
    return [r for r, k in zip(ok, keys, strict=True) if not any(_dominates(o, k) for o in keys if o is not k)]


_OBJECTIVES: dict[str, tuple[str, bool]] = {  # objective -> (metric, higher is better)
    "latency": ("p50_ms", False),
    "throughput": ("throughput", True),
    "memory": ("peak_memory_mb", False),
    "size": ("size_mb", False),
    "cost": ("usd_per_1m", False),
    "energy": ("energy_mj", False),
}


def choose_winner(feasible: list[CandidateResult], objective: str) -> CandidateResult | None:
    """Exactly one winner by the objective; ties broken by p50, then p99, then candidate id."""
    if not feasible:
        return None

    def key(r: CandidateResult) -> tuple[Any, ...]:
        if objective == "accuracy":
            q = r.quality() or 0.0
            hib = higher_is_better(r.metric("accuracy_metric")) if r.metric("accuracy") is not None else True
            primary = -q if hib else q
        else:
            metric, hib = _OBJECTIVES[objective]
            v = r.metric(metric) or 0.0
            primary = -v if hib else v
        return (primary, r.metric("p50_ms") or 0.0, r.metric("p99_ms") or 0.0, r.candidate.id)

    return min(feasible, key=key)


def near_misses(results: list[CandidateResult], k: int = 5) -> list[CandidateResult]:
    """The ok-but-infeasible results closest to feasible: fewest violations, then smallest relative excess."""
    missed = [r for r in results if r.measurement.ok and r.violations]

    def key(r: CandidateResult) -> tuple[int, float]:
        rel = sum(abs(v.relative) if v.relative is not None else 1e9 for v in r.violations)
        return (len(r.violations), rel)

    return sorted(missed, key=key)[:k]
