"""The search loop: for each candidate, reuse the stored measurement or measure it in a worker, store it
at once, and go on whatever happened. The reference candidate runs first; its outputs on the evaluation
data become the reference for fidelity. Larger batch sizes are swept only for the fastest configurations.
Each candidate is measured holding the measurement lock of this run's cores (``measure.lock``): two runs on the
same cores take turns instead of timing each other's load."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.measure.job import PROTOCOL, LatencyProbe, PassStep, QualityJob, SensitivityRequest, WorkerJob
from chipfit.measure.lock import CONCURRENT_LOAD, measurement_lock
from chipfit.measure.measurement import Measurement
from chipfit.measure.runner import run_isolated
from chipfit.measure.stats import TimingPolicy, probe_bar
from chipfit.passes.base import PassContext
from chipfit.search.guide import Guide
from chipfit.search.select import CandidateResult, evaluate
from chipfit.search.space import Candidate
from chipfit.spec import Spec
from chipfit.store import Store

__all__ = ["MeasureSettings", "SearchContext", "cap_s", "run_search"]


@dataclass(frozen=True)
class MeasureSettings:
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    timeout_s: float = 300.0
    memory_limit_mb: int | None = None
    eval_limit: int | None = None
    batch_sweep_top: int = 3
    option_sweep_top: int = 3
    probe: bool = True  # a short latency probe before full measurement (objective latency / throughput)
    probe_margin: float = 1.15  # pruned only when the probe's median exceeds the best by this factor
    retry_failed: bool = False
    fresh: bool = False
    predict: bool = True  # measure in order of predicted promise; skip predicted wide misses of latency bounds
    lock_wait_s: float = 600.0  # wait at most this long for another run measuring on the same cores
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)  # the time budget's clock


@dataclass
class SearchContext:
    """Everything the loop needs that is not the candidate: files, hashes, quality settings, where to store."""

    model_path: Path
    model_sha256: str
    input_names: list[str]
    dynamic_batch: bool
    data_dir: Path
    calib_dir: Path | None
    calib_sha256: str | None
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
            "protocol": PROTOCOL,  # a new worker protocol measures again instead of reusing stored results
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def pass_context(self) -> PassContext:
        return PassContext(self.calib_dir, self.calib_sha256, self.input_names)

    @property
    def reference_path(self) -> Path:
        return self.refs_dir / f"{self.model_sha256[:16]}-{self.context_hash}.npz"

    def job(
        self, c: Candidate, probe: LatencyProbe | None = None, sensitivity: SensitivityRequest | None = None
    ) -> WorkerJob:
        """The worker job that measures ``c`` (with a latency probe first, when given), or ranks its nodes'
        quantization sensitivity."""
        quality = QualityJob(
            chunk=max(c.batch, 32) if self.dynamic_batch else c.batch,
            limit=self.settings.eval_limit,
            metric=self.metric,
            fidelity_metric=self.fidelity_metric,
            save_reference=self.reference_path if c.reference else None,
            reference=None if c.reference else self.reference_path,
        )
        return WorkerJob(
            home=self.variants_dir.parent,
            model_path=self.model_path,
            model_sha256=self.model_sha256,
            passes=tuple(PassStep.of(p) for p in c.passes),
            backend=c.backend,
            target=c.target,
            options=dict(c.options),
            batch=c.batch,
            input_names=tuple(self.input_names),
            data_dir=self.data_dir,
            calib_dir=self.calib_dir,
            calib_sha256=self.calib_sha256,
            variants_dir=self.variants_dir,
            timing=self.settings.timing,
            quality=quality,
            probe=probe,
            sensitivity=sensitivity,
        )


# callback(event, candidate, result, index, total): event is "start" (result None) or "done"
Callback = Callable[[str, Candidate, CandidateResult | None, int, int], None]
# refine(batch-1 results, measure) -> extra results: a search step between the batch-1 sweep and larger batches
Refine = Callable[[list[CandidateResult], Callable[[Candidate], CandidateResult]], list[CandidateResult]]
_PROBED_OBJECTIVES = ("latency", "throughput")  # a probe compares p50 at one batch size: only these rank by it


def _stored(ctx: SearchContext, c: Candidate, probe: LatencyProbe | None) -> Measurement | None:
    """The stored measurement of ``c`` to reuse, or None when it must be measured (again)."""
    stored = None if ctx.settings.fresh else ctx.store.get(ctx.model_sha256, c, ctx.context_hash, ctx.env_hash)
    if stored is not None and c.reference and stored.ok and not ctx.reference_path.exists():
        stored = None  # the reference outputs are gone: measure the reference again to recreate them
    if stored is not None and stored.status == "pruned":  # pruned against an earlier best: still beaten?
        p50 = stored.metrics.get("probe_p50_ms")
        if probe is None or p50 is None or p50 <= probe_bar(probe.beat_ms, probe.margin):
            stored = None
    if stored is not None and stored.metrics.get(CONCURRENT_LOAD):
        stored = None  # timed under another run's load: not a clean measurement to reuse
    if stored is not None and not (ctx.settings.retry_failed and stored.status in ("failed", "timeout", "oom")):
        return stored
    return None


def _measure_new(ctx: SearchContext, c: Candidate, probe: LatencyProbe | None) -> Measurement:
    """Measure ``c`` in a worker, holding the measurement lock, and store the result."""
    job = ctx.job(c, probe)
    home = ctx.variants_dir.parent  # chipfit's home, as the worker's job names it
    what = f"measuring {c.id} for {ctx.workdir.parent}"
    with measurement_lock(home, wait_s=ctx.settings.lock_wait_s, what=what) as lock:
        m = run_isolated(job, ctx.workdir / c.id, cap_s(ctx, c), ctx.settings.memory_limit_mb, ctx.threads)
    if lock.note is not None:
        m.metrics[CONCURRENT_LOAD] = True
        m.notes.append(lock.note)
    ctx.store.put(ctx.model_sha256, c, ctx.context_hash, ctx.env, ctx.env_hash, m)
    return m


def cap_s(ctx: SearchContext, c: Candidate) -> float:
    """The longest one candidate's worker may run: the timeout plus its build's tuning budget."""
    return ctx.settings.timeout_s + _build_time(c)


def _build_time(c: Candidate) -> float:
    """Extra seconds a candidate's build may take: its tuning budget (a tuning run without a time budget
    gets half an hour)."""
    if not c.options.get("tune_trials"):
        return 0.0
    return float(c.options.get("tune_time_s") or 1800.0) * 1.5 + 120.0


class _Search:
    """The loop's state: results so far, which variants and configs earned the wider sweeps."""

    def __init__(
        self,
        ctx: SearchContext,
        spec: Spec | None,
        budget: float | None,
        callback: Callback | None,
        started: float | None = None,
    ):
        self.ctx, self.spec, self.budget, self.callback = ctx, spec, budget, callback
        self.clock = ctx.settings.clock
        self.start = self.clock() if started is None else started
        self.results: list[CandidateResult] = []
        self.costs: list[float] = []  # seconds each candidate measured in this run took
        self.total = 0

    def budget_skip(self, c: Candidate) -> str | None:
        """Why ``c`` is not started within the time budget, or None. A candidate starts only when the time
        left covers its estimated cost (the slowest measured so far, at most its timeout): the run then ends
        within the budget plus at most one candidate's cap, the budget being a bound."""
        if self.budget is None or c.reference:
            return None
        left = self.start + self.budget - self.clock()
        if left <= 0:
            return f"time budget of {self.budget:g}s spent before this candidate"
        estimate = min(cap_s(self.ctx, c), max(self.costs, default=0.0))
        if estimate <= left:
            return None
        return (
            f"time budget of {self.budget:g}s: {left:.0f}s left, less than a candidate takes here "
            f"(~{estimate:.0f}s, the slowest measured so far)"
        )

    def feasible(self) -> list[CandidateResult]:
        if self.spec is None:
            return [r for r in self.results if r.measurement.ok]
        evaluate(self.results, self.spec)
        return [r for r in self.results if r.feasible]

    def probe(self, c: Candidate) -> LatencyProbe | None:
        if c.reference or not self.ctx.settings.probe or self.spec is None:
            return None
        if self.spec.objective not in _PROBED_OBJECTIVES:
            return None
        best = [r.metric("p50_ms") for r in self.feasible() if r.candidate.batch == c.batch]
        best = [v for v in best if v is not None]
        return LatencyProbe(beat_ms=min(best), margin=self.ctx.settings.probe_margin) if best else None

    def fastest(self, top: int, key: Callable[[Candidate], str], batch: int) -> set[str]:
        ok = [r for r in self.feasible() if r.candidate.batch == batch and r.metric("p50_ms") is not None]
        ok.sort(key=lambda r: r.metric("p50_ms"))
        out: list[str] = []
        for r in ok:
            k = key(r.candidate)
            if k not in out:
                out.append(k)
        return set(out[:top])

    def measure(self, c: Candidate, skip: str | None = None, predicted_ms: float | None = None) -> CandidateResult:
        i = len(self.results)
        self.total = max(self.total, i + 1)
        if c.skip:  # the candidate's own reason (no GPU, unsuitable model) comes before the search's
            skip = c.skip
        probe, stored = None, None
        if not skip:
            probe = self.probe(c)
            stored = _stored(self.ctx, c, probe)
            if stored is None:  # a stored result costs nothing: only a new measurement waits for the budget
                skip = self.budget_skip(c)
        if skip:
            r = CandidateResult(c, Measurement("skipped", error=skip), "skipped")
        else:
            t0 = self.clock()
            if self.callback:
                self.callback("start", c, None, i, self.total)
            if stored is not None:
                r = CandidateResult(c, stored, "stored")
            else:
                r = CandidateResult(c, _measure_new(self.ctx, c, probe), "measured")
                self.costs.append(self.clock() - t0)
        if predicted_ms is not None:  # kept beside the measurement (not stored): how far the prediction was
            r.measurement.metrics.setdefault("predicted_p50_ms", predicted_ms)
        self.results.append(r)
        if self.callback:
            self.callback("done", c, r, i, self.total)
        return r


def run_search(
    ctx: SearchContext,
    candidates: list[Candidate],
    time_budget_s: float | None = None,
    callback: Callback | None = None,
    spec: Spec | None = None,
    refine: Refine | None = None,
    guide: Guide | None = None,
    started: float | None = None,
) -> list[CandidateResult]:
    """Measure ``candidates`` (reference first) within the time budget; returns one result per candidate.

    The budget counts from ``started`` (on ``ctx.settings.clock``; default: now). A candidate is started only
    when the time left covers its estimated cost, so that the run ends within the budget plus one candidate's
    cap (its timeout); the reference is always measured.

    At the first batch size every variant runs with its backend's default options; the other runtime options
    are measured only for the ``option_sweep_top`` fastest feasible variants, and larger batch sizes only for
    the ``batch_sweep_top`` fastest feasible configurations. With a ``spec`` whose objective is latency or
    throughput, each candidate first gets a short latency probe against the best feasible one so far.
    ``refine`` (e.g. the accuracy-aware mixed-precision search) runs after the first batch size. A ``guide``
    orders each stage by predicted latency and skips predicted wide misses (of a bound, or with a kernel-level
    prediction, of the best measured so far); a skipped candidate keeps its prediction (``predicted_p50_ms``);
    results keep the space's order.
    """
    index = {c.id: i for i, c in enumerate(candidates)}
    if guide is not None:
        candidates = guide.order(candidates)
    s = _Search(ctx, spec, time_budget_s, callback, started)
    s.total = len(candidates)
    first = min((c.batch for c in candidates), default=1)
    top_o, top_b = ctx.settings.option_sweep_top, ctx.settings.batch_sweep_top
    variants: set[str] | None = None
    configs: set[str] | None = None
    pending = refine  # runs once, between the first batch size and the larger ones
    for c in candidates:
        if c.batch != first and pending is not None:
            s.total += len(pending(list(s.results), s.measure))
            pending = None
        skip = None
        if c.option_sweep and c.batch == first:
            if variants is None:
                variants = s.fastest(top_o, Candidate.variant_key, first)
            if c.variant_key() not in variants:
                skip = f"runtime options swept only for the {top_o} fastest feasible variants"
        elif c.batch != first and not c.reference:
            if configs is None:
                configs = s.fastest(top_b, lambda x: x.config_id, first)
            if c.config_id not in configs:
                skip = f"batch sweep only for the {top_b} fastest feasible configurations at batch {first}"
        predicted = None
        if guide is not None:
            predicted = guide.kernel_ms(c) if c.batch == first else None  # others: computed only to skip
            if skip is None:
                skip = guide.skip_reason(c, spec, s.feasible())
                if skip and predicted is None and "kernel-level" in skip:
                    predicted = guide.kernel_ms(c)  # computed for the skip: listed with the candidate
        s.measure(c, skip, predicted)
    if pending is not None:
        pending(list(s.results), s.measure)
    return sorted(s.results, key=lambda r: index.get(r.candidate.id, len(index)))
