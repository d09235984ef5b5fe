"""Selection: constraints → feasible set → Pareto front → one winner; near-misses with what they missed.

Quality is ``accuracy`` when labels were given, else ``fidelity``. ``accuracy_drop`` is the reference
candidate's accuracy minus the candidate's (for MSE, the increase), so a negative drop is an improvement.
Without a quality bound, a reduced-precision candidate (int8, fp16, bf16) must still keep the default
fidelity floor (``spec.DEFAULT_MIN_FIDELITY``). A ``max_p99_ms`` verdict on a p99 from fewer than
``stats.MIN_P99_SAMPLES`` samples says so: in the violation's text, or as a caveat on a candidate that held it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chipfit.measure.measurement import Measurement
from chipfit.measure.quality import higher_is_better
from chipfit.measure.stats import MIN_P99_SAMPLES
from chipfit.search.space import Candidate
from chipfit.spec import CONSTRAINTS, DEFAULT_MIN_FIDELITY, Spec

__all__ = [
    "CandidateResult",
    "Violation",
    "choose_winner",
    "default_quality_floor",
    "evaluate",
    "near_misses",
    "pareto_front",
    "precision_of",
    "quality_floor_text",
]

_PASS_PRECISION = {"int8_dynamic": "int8", "int8_static": "int8", "nncf_int8": "int8", "fp16": "fp16"}
_OPTION_PRECISION = {"bf16": "bf16", "f16": "fp16", "fp16": "fp16", "i8": "int8", "int8": "int8"}


def precision_of(c: Candidate) -> str:
    """The arithmetic ``c`` runs in: ``fp32``, or the reduced precision (``int8``, ``fp16``, ``bf16``) that one
    of its passes or runtime options gives it (the lowest, when several do)."""
    found = {_PASS_PRECISION[p["name"]] for p in c.passes if p["name"] in _PASS_PRECISION}
    option = str(c.options.get("precision", "f32")).lower()  # e.g. OpenVINO's inference precision hint
    if option in _OPTION_PRECISION:
        found.add(_OPTION_PRECISION[option])
    if c.options.get("trt_fp16"):  # TensorRT's fp16 kernels
        found.add("fp16")
    return next((p for p in ("int8", "fp16", "bf16") if p in found), "fp32")


def default_quality_floor(spec: Spec) -> float | None:
    """The fidelity reduced-precision candidates must keep when ``spec`` sets no quality bound (else None)."""
    if spec.max_accuracy_drop is not None or spec.min_fidelity is not None:
        return None
    return DEFAULT_MIN_FIDELITY


def quality_floor_text(spec: Spec) -> str | None:
    """The default quality floor in words, as the output shows it (None: a quality bound was given)."""
    floor = default_quality_floor(spec)
    if floor is None:
        return None
    return (
        f"default quality floor: reduced-precision variants (int8, fp16, bf16) must keep fidelity "
        f"({spec.fidelity_metric}) >= {floor:g} to the fp32 reference, since neither --max-accuracy-drop nor "
        "--min-fidelity was given"
    )


@dataclass(frozen=True)
class Violation:
    constraint: str
    bound: float
    value: float | None
    excess: float | None  # how far past the bound, in the constraint's unit (None: value not measured)
    relative: float | None  # excess / bound
    note: str | None = None  # e.g. the bound is the default floor, or the value rests on too few samples

    def describe(self) -> str:
        c = CONSTRAINTS[self.constraint]
        note = f" [{self.note}]" if self.note else ""
        if self.value is None:
            return f"{self.constraint}: not measured{note}"
        sign = ">" if c.kind == "max" else "<"
        rel = f", {self.relative:+.0%}" if self.relative is not None else ""
        by = f"(by {self.excess:.3g}{c.unit}{rel})"
        return f"{c.metric} {self.value:.4g}{c.unit} {sign} {self.bound:g}{c.unit} {by}{note}"


@dataclass
class CandidateResult:
    candidate: Candidate
    measurement: Measurement
    source: str = "measured"  # measured | stored | skipped
    violations: list[Violation] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # verdicts that held on too little evidence
    quality_floor: float | None = None  # the default fidelity floor this candidate was held to (reduced precision)

    @property
    def p99_reliable(self) -> bool | None:
        """False when the p99 comes from fewer than ``MIN_P99_SAMPLES`` samples (None: no p99)."""
        if self.metric("p99_ms") is None:
            return None
        flag, n = self.metric("p99_reliable"), self.metric("samples")
        return bool(flag) if flag is not None else (n is not None and n >= MIN_P99_SAMPLES)

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
            "p99_reliable": self.p99_reliable,
            "samples": m.get("samples"),
            "energy_mj": m.get("energy_mj"),
            "energy_method": m.get("energy_method"),
            "quality": {
                k: m.get(k)
                for k in ("accuracy", "accuracy_metric", "accuracy_drop", "fidelity", "fidelity_metric")
                if m.get(k) is not None
            },
            "metrics": m,
            "violations": [v.__dict__ | {"text": v.describe()} for v in self.violations],
            "caveats": list(self.caveats),
            "quality_floor": (
                {"min_fidelity": self.quality_floor, "default": True, "precision": precision_of(self.candidate)}
                if self.quality_floor is not None
                else None
            ),
            "notes": self.measurement.notes,
        }


def evaluate(results: list[CandidateResult], spec: Spec, target: Any = None) -> None:
    """Derive accuracy_drop from the reference, cost and energy on ``target`` (a catalogue ``Target``; default this
    machine's), and fill each result's violations, caveats and default quality floor (in place): a cost or energy
    bound is checked at that target's price and power."""
    from chipfit.hardware.cost import cost_energy
    from chipfit.hardware.local import local_target

    if target is None:
        target, _ = local_target(measure=False)
    ref = next((r for r in results if r.candidate.reference and r.measurement.ok), None)
    base = ref.metric("accuracy") if ref else None
    floor = default_quality_floor(spec)
    for r in results:
        m = r.measurement.metrics
        if r.measurement.ok:
            m.update(cost_energy(m, target, r.candidate.options))
        acc, metric = m.get("accuracy"), m.get("accuracy_metric")
        if acc is not None and base is not None and metric:
            m["accuracy_drop"] = (base - acc) if higher_is_better(metric) else (acc - base)
        reduced = floor is not None and not r.candidate.reference and precision_of(r.candidate) != "fp32"
        r.quality_floor = floor if reduced and r.measurement.ok else None
        r.violations = _violations(m, spec, r.quality_floor, precision_of(r.candidate)) if r.measurement.ok else []
        r.caveats = _caveats(r, spec) if r.measurement.ok else []


def _violations(metrics: dict[str, Any], spec: Spec, floor: float | None, precision: str) -> list[Violation]:
    bounds = spec.bounds()
    notes: dict[str, str | None] = dict.fromkeys(bounds)
    if floor is not None:
        bounds["min_fidelity"] = floor
        notes["min_fidelity"] = f"default floor for {precision} without a quality bound"
    if "max_p99_ms" in bounds and _few_samples(metrics):
        notes["max_p99_ms"] = _few_text(metrics)
    out = []
    for name, bound in bounds.items():
        c = CONSTRAINTS[name]
        value = metrics.get(c.metric)
        if value is None:
            out.append(Violation(name, bound, None, None, None, notes[name]))
            continue
        excess = value - bound if c.kind == "max" else bound - value
        if excess > 1e-12:
            rel = excess / bound if bound else None
            out.append(Violation(name, bound, float(value), float(excess), rel, notes[name]))
    return out


def _few_samples(metrics: dict[str, Any]) -> bool:
    if metrics.get("p99_ms") is None:
        return False
    flag, n = metrics.get("p99_reliable"), metrics.get("samples")
    return flag is False or (flag is None and n is not None and n < MIN_P99_SAMPLES)


def _few_text(metrics: dict[str, Any]) -> str:
    return f"p99 from only {metrics.get('samples')} samples, fewer than {MIN_P99_SAMPLES}: not reliable"


def _caveats(r: CandidateResult, spec: Spec) -> list[str]:
    """Bounds the candidate held on too little evidence."""
    m = r.measurement.metrics
    held = spec.max_p99_ms is not None and not any(v.constraint == "max_p99_ms" for v in r.violations)
    if held and _few_samples(m):
        return [f"max_p99_ms held on a {_few_text(m)}; give it more time (--measure-time) for a verdict to rely on"]
    return []


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
