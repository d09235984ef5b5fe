"""Accuracy-aware mixed precision: when an int8 candidate is faster than every feasible *fp32* one but breaks
the quality bound (``max_accuracy_drop`` / ``min_fidelity``), keep its most sensitive nodes in fp32 until it
holds. The bar is fp32, not every feasible candidate: a feasible bf16 or fp16 candidate that is already faster
than the int8 one must not stop the search, since int8 with its sensitive nodes in fp32 can still beat it (the
latency probe then prunes the steps that do not).

1. Rank the nodes the int8 pass quantizes by sensitivity: each quantized alone, its output error against the
   fp32 model on calibration samples (a worker job, ``measure.sensitivity``; cached).
2. Add nodes back to fp32 in that order, 1, 2, 3, 4, 6, 8, 12, ... at a time; each step is an ordinary
   candidate (the int8 pass with ``exclude``), measured, stored and latency-probed like any other.
3. Stop when the bound holds, when keeping more in fp32 makes it slower than the best feasible candidate
   (the probe prunes it), or at the run's time budget. The report names the nodes kept and what each step cost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chipfit.measure.job import PROTOCOL, SensitivityRanking, SensitivityRequest
from chipfit.measure.runner import run_worker
from chipfit.search.select import CandidateResult, evaluate
from chipfit.search.space import Candidate
from chipfit.spec import Spec

__all__ = ["QUANT_PASSES", "MixedPrecision", "MixedPrecisionReport", "is_fp32"]

QUANT_PASSES = ("int8_dynamic", "int8_static")
_REDUCED_PASSES = (*QUANT_PASSES, "fp16", "nncf_int8")
_REDUCED_OPTIONS = {"bf16", "f16", "fp16", "int8", "i8", "u8"}
_QUALITY = {"max_accuracy_drop", "min_fidelity"}
_OBJECTIVE_METRIC = {"latency": "p50_ms", "throughput": "p50_ms", "memory": "peak_memory_mb", "size": "size_mb"}
Measure = Callable[[Candidate], CandidateResult]


@dataclass
class MixedPrecisionReport:
    base: str
    bound: str
    ranking: list[list[Any]] = field(default_factory=list)  # [node, error when quantized alone], worst first
    unranked: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_fp32(c: Candidate) -> bool:
    """No pass and no backend option that lowers precision (int8, fp16, bf16)."""
    if any(p["name"] in _REDUCED_PASSES for p in c.passes):
        return False
    return not any(isinstance(v, str) and v.lower() in _REDUCED_OPTIONS for v in c.options.values())


def _schedule(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    return ks


class MixedPrecision:
    """The refinement step of ``run_search``: called once with the batch-1 results and a measuring function."""

    def __init__(self, ctx: Any, spec: Spec, deadline: float | None, max_steps: int = 12) -> None:
        self.ctx, self.spec, self.deadline, self.max_steps = ctx, spec, deadline, max_steps
        self.report: MixedPrecisionReport | None = None

    def _metric(self) -> str | None:
        return _OBJECTIVE_METRIC.get(self.spec.objective)

    def _best_feasible(self, results: list[CandidateResult], batch: int, fp32_only: bool = False) -> float | None:
        key = self._metric()
        vals = [
            r.metric(key)
            for r in results
            if r.feasible and r.candidate.batch == batch and key and (not fp32_only or is_fp32(r.candidate))
        ]
        return min((v for v in vals if v is not None), default=None)

    def _base(self, results: list[CandidateResult]) -> CandidateResult | None:
        key = self._metric()
        if key is None or not (set(self.spec.bounds()) & _QUALITY):
            return None
        out = []
        for r in results:
            names = {v.constraint for v in r.violations}
            quant = any(p["name"] in QUANT_PASSES for p in r.candidate.passes)
            if r.measurement.ok and quant and names and names <= _QUALITY and r.metric(key) is not None:
                best = self._best_feasible(results, r.candidate.batch, fp32_only=True)
                if best is None or r.metric(key) < best:
                    out.append(r)
        return min(out, key=lambda r: (r.metric(key), r.candidate.id), default=None)

    def _ranking(self, base: Candidate) -> SensitivityRanking | None:
        ctx = self.ctx
        qi = max(i for i, p in enumerate(base.passes) if p["name"] in QUANT_PASSES)
        chain = [dict(p) for p in base.passes]
        key_src = {
            "model": ctx.model_sha256,
            "chain": chain,
            "calib": ctx.calib_sha256,
            "opt": base.options,
            "protocol": PROTOCOL,
        }
        key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
        cache = ctx.variants_dir / "sensitivity" / f"{key}.json"
        if cache.exists():
            return SensitivityRanking.model_validate_json(cache.read_text())
        left = (self.deadline - time.monotonic()) if self.deadline else ctx.settings.timeout_s
        request = SensitivityRequest(quant_index=qi, time_s=max(5.0, left * 0.5), samples=32)
        job = ctx.job(base, sensitivity=request)
        result, _ = run_worker(
            job, ctx.workdir / f"sens-{base.id}", ctx.settings.timeout_s, ctx.settings.memory_limit_mb, ctx.threads
        )
        if result.status != "ok" or result.sensitivity is None:
            self._outcome(f"sensitivity ranking failed: {result.error}")
            return None
        if not result.sensitivity.unranked:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(result.sensitivity.model_dump_json())
        return result.sensitivity

    def _outcome(self, text: str) -> None:
        if self.report is not None:
            self.report.outcome = text

    def __call__(self, results: list[CandidateResult], measure: Measure) -> list[CandidateResult]:
        evaluate(results, self.spec)
        base = self._base(results)
        if base is None:
            return []
        bound = ", ".join(v.describe() for v in base.violations)
        self.report = MixedPrecisionReport(base=base.candidate.label(), bound=bound)
        ranking = self._ranking(base.candidate)
        if ranking is None:
            return []
        ranked = [r[0] for r in ranking.ranking] + list(ranking.unranked)
        self.report.ranking, self.report.unranked = [list(r) for r in ranking.ranking], len(ranking.unranked)
        qi = max(i for i, p in enumerate(base.candidate.passes) if p["name"] in QUANT_PASSES)
        added: list[CandidateResult] = []
        prev_k, prev_p50 = 0, base.metric("p50_ms")
        self._outcome("the bound was not met within the schedule")
        for k in _schedule(len(ranked))[: self.max_steps]:
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._outcome(f"time budget spent after {prev_k} nodes kept in fp32")
                break
            passes = [dict(p) for p in base.candidate.passes]
            passes[qi] = {**passes[qi], "params": {**passes[qi].get("params", {}), "exclude": ranked[:k]}}
            c = Candidate(base.candidate.backend, tuple(passes), dict(base.candidate.options), base.candidate.target,
                          base.candidate.batch)  # fmt: skip
            r = measure(c)
            added.append(r)
            evaluate(results + added, self.spec)
            p50 = r.metric("p50_ms")
            self.report.steps.append({
                "kept_fp32": k,
                "added": [[n, _error_of(ranking, n)] for n in ranked[prev_k:k]],
                "status": r.measurement.status,
                "p50_ms": p50,
                "p50_cost_ms": (p50 - prev_p50) if p50 is not None and prev_p50 is not None else None,
                "quality": r.quality(),
                "feasible": r.feasible,
                "candidate": c.id,
            })  # fmt: skip
            prev_k, prev_p50 = k, p50 if p50 is not None else prev_p50
            if r.feasible:
                self._outcome(f"bound met with {k} of {len(ranked)} nodes kept in fp32: {', '.join(ranked[:k])}")
                break
            if r.measurement.status == "pruned":
                self._outcome(f"with {k} nodes in fp32 it is no longer faster than the best feasible candidate")
                break
            if not r.measurement.ok:
                self._outcome(f"step with {k} nodes in fp32 {r.measurement.status}: {r.measurement.error}")
                break
        return added


def _error_of(ranking: SensitivityRanking, node: str) -> float | None:
    return next((e for n, e in ranking.ranking if n == node), None)
