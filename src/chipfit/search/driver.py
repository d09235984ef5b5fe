"""The search loop: for each candidate, reuse the stored measurement or measure it in a worker, store it
at once, and go on whatever happened. The reference candidate runs first; its outputs on the evaluation
data become the reference for fidelity. Larger batch sizes are swept only for the fastest configurations."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.measure.measurement import Measurement
from chipfit.measure.runner import run_isolated
from chipfit.measure.stats import TimingPolicy
from chipfit.search.select import CandidateResult
from chipfit.search.space import Candidate
from chipfit.store import Store

__all__ = ["MeasureSettings", "SearchContext", "run_search"]

WORKER_PROTOCOL = 1  # bump when the worker's way of measuring changes: stored results are then not reused


@dataclass(frozen=True)
class MeasureSettings:
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    timeout_s: float = 300.0
    memory_limit_mb: int | None = None
    eval_limit: int | None = None
    batch_sweep_top: int = 3
    retry_failed: bool = False
    fresh: bool = False


@dataclass
class SearchContext:
    """Everything the loop needs that is not the candidate: files, hashes, quality settings, where to store."""

    model_path: Path
    model_sha256: str
    input_names: list[str]
    dynamic_batch: bool
    data_dir: Path
    calib_dir: Path | None
    data_sha256: str
    metric: str | None
    fidelity_metric: str
    workdir: Path  # this run's scratch folder (jobs, stderr)
    variants_dir: Path
    refs_dir: Path
    store: Store
    env: dict[str, Any]
    env_hash: str
    threads: int
    settings: MeasureSettings

    @property
    def context_hash(self) -> str:
        payload = {
            "data": self.data_sha256,
            "metric": self.metric,
            "fidelity": self.fidelity_metric,
            "timing": self.settings.timing.__dict__,
            "eval_limit": self.settings.eval_limit,
            "protocol": WORKER_PROTOCOL,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    @property
    def reference_path(self) -> Path:
        return self.refs_dir / f"{self.model_sha256[:16]}-{self.context_hash}.npz"

    def job(self, c: Candidate) -> dict[str, Any]:
        chunk = max(c.batch, 32) if self.dynamic_batch else c.batch
        return {
            "model_path": str(self.model_path),
            "model_sha256": self.model_sha256,
            "passes": [dict(p) for p in c.passes],
            "backend": c.backend,
            "target": c.target,
            "options": dict(c.options),
            "batch": c.batch,
            "input_names": self.input_names,
            "data_dir": str(self.data_dir),
            "calib_dir": str(self.calib_dir) if self.calib_dir else None,
            "variants_dir": str(self.variants_dir),
            "timing": self.settings.timing.__dict__,
            "quality": {
                "chunk": chunk,
                "limit": self.settings.eval_limit,
                "metric": self.metric,
                "fidelity_metric": self.fidelity_metric,
                "save_reference": str(self.reference_path) if c.reference else None,
                "reference": None if c.reference else str(self.reference_path),
            },
        }


# callback(event, candidate, result, index, total): event is "start" (result None) or "done"
Callback = Callable[[str, Candidate, CandidateResult | None, int, int], None]


def _measure_one(ctx: SearchContext, c: Candidate) -> tuple[Measurement, str]:
    stored = None if ctx.settings.fresh else ctx.store.get(ctx.model_sha256, c, ctx.context_hash, ctx.env_hash)
    if stored is not None and c.reference and stored.ok and not ctx.reference_path.exists():
        stored = None  # the reference outputs are gone: measure the reference again to recreate them
    if stored is not None and not (ctx.settings.retry_failed and not stored.ok):
        return stored, "stored"
    m = run_isolated(ctx.job(c), ctx.workdir / c.id, ctx.settings.timeout_s, ctx.settings.memory_limit_mb, ctx.threads)
    ctx.store.put(ctx.model_sha256, c, ctx.context_hash, ctx.env, ctx.env_hash, m)
    return m, "measured"


def run_search(
    ctx: SearchContext,
    candidates: list[Candidate],
    time_budget_s: float | None = None,
    callback: Callback | None = None,
) -> list[CandidateResult]:
    """Measure ``candidates`` (reference first) within the time budget; returns one result per candidate."""
    start = time.monotonic()
    results: list[CandidateResult] = []
    first_batch = min((c.batch for c in candidates), default=1)
    sweep: set[str] | None = None
    total = len(candidates)
    for i, c in enumerate(candidates):
        if c.batch != first_batch and sweep is None:
            sweep = _fastest_configs(results, ctx.settings.batch_sweep_top)
        skip = _skip_reason(c, sweep, start, time_budget_s, ctx.settings.batch_sweep_top)
        if skip:
            r = CandidateResult(c, Measurement("skipped", error=skip), "skipped")
        else:
            if callback:
                callback("start", c, None, i, total)
            m, source = _measure_one(ctx, c)
            r = CandidateResult(c, m, source)
        results.append(r)
        if callback:
            callback("done", c, r, i, total)
    return results


def _skip_reason(c: Candidate, sweep: set[str] | None, start: float, budget: float | None, top: int) -> str | None:
    if budget is not None and time.monotonic() - start > budget and not c.reference:
        return f"time budget of {budget:g}s spent before this candidate"
    if sweep is not None and c.config_id not in sweep:
        return f"batch sweep only for the {top} fastest configurations at batch 1"
    return None


def _fastest_configs(results: list[CandidateResult], top: int) -> set[str]:
    ok = [r for r in results if r.measurement.ok and r.metric("p50_ms") is not None]
    ok.sort(key=lambda r: r.metric("p50_ms"))
    return {r.candidate.config_id for r in ok[:top]}
