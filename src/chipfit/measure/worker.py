"""The measurement worker: one process per candidate, started by ``measure.runner``.

``python -m chipfit.measure.worker JOB.json RESULT.json`` reads a ``WorkerJob`` (``measure.job``), applies the
candidate's passes (cached), compiles it with its backend, warms up, times it until the estimate is stable or
the time cap is hit, reads its peak memory, evaluates quality, and writes a ``WorkerResult`` atomically. An
exception becomes ``status: failed`` (or ``oom``) with its text; a crash or hang is classified by the parent,
which sees no result file.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.measure.job import WorkerJob, WorkerMetrics, WorkerProtocolError, WorkerResult
from chipfit.measure.outputs import collect_outputs, feed
from chipfit.measure.stats import TimingPolicy, probe_bar

__all__ = ["main", "measure", "run_job", "time_executable"]

Clock = Callable[[], int]  # nanoseconds, like time.perf_counter_ns


def time_executable(
    exe: Any, inputs: dict[str, np.ndarray], batch: int, policy: TimingPolicy, clock: Clock = time.perf_counter_ns
) -> dict[str, Any]:
    """Warm up, then time ``exe.run(inputs)`` until ``stats.stop_reason`` says stop; the latency summary."""
    from chipfit.hardware.energy import EnergyMeter
    from chipfit.measure.stats import latency_summary, stop_reason

    _warm_up(exe, inputs, policy, clock)
    meter = EnergyMeter()
    joules0 = meter.read() if meter.available else 0.0
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        exe.run(inputs)
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        why = stop_reason(samples, (t1 - start) / 1e9, policy)
        if why is not None:
            break
    out = latency_summary(samples, batch)
    out["stopped_by"] = why
    if meter.available:
        out["energy_j_per_inf"] = (meter.read() - joules0) / (len(samples) * batch)
        out["energy_counter"] = meter.method
    return out


def _warm_up(exe: Any, inputs: dict[str, np.ndarray], policy: TimingPolicy, clock: Clock) -> None:
    t_end = clock() + policy.warmup_s * 1e9
    runs = 0
    while runs < policy.warmup_runs or clock() < t_end:
        exe.run(inputs)
        runs += 1


def _probe(
    exe: Any, inputs: dict[str, np.ndarray], beat_ms: float, margin: float, policy: TimingPolicy
) -> tuple[float, int] | None:
    """A short latency probe after a full warm-up: None when the candidate may beat ``beat_ms``, else
    (median ms, runs) showing it cannot, even allowing ``margin`` for noise. Stops early once the answer is clear."""
    _warm_up(exe, inputs, policy, time.perf_counter_ns)
    samples: list[float] = []
    deadline = time.perf_counter() + max(0.2, min(2.0, beat_ms * margin * 40 / 1000))
    while len(samples) < 40 and (len(samples) < 15 or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        exe.run(inputs)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= 15 and float(np.median(samples)) <= probe_bar(beat_ms, margin):
            return None
    median = float(np.median(samples))
    return (median, len(samples)) if median > probe_bar(beat_ms, margin) else None


def measure(job: WorkerJob) -> WorkerResult:
    """Measure one candidate in this process; never raises for anything the candidate does."""
    from chipfit.backends import get_backend
    from chipfit.data import Dataset
    from chipfit.measure import quality
    from chipfit.measure.measurement import looks_like_oom
    from chipfit.measure.memory import MemoryProbe
    from chipfit.onnx_files import onnx_files
    from chipfit.passes import PassContext, apply_passes

    phase = "setup"
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if job.home is not None:  # backends keep caches (e.g. TVM's tuning database) in chipfit's home
        os.environ["CHIPFIT_HOME"] = str(job.home)
    try:
        data = Dataset.load_saved(job.data_dir, list(job.input_names))
        phase = "passes"
        ctx = PassContext(job.calib_dir, job.calib_sha256, list(job.input_names))
        passes = [p.as_dict() for p in job.passes]
        variant, notes = apply_passes(job.model_path, job.model_sha256, passes, job.variants_dir, ctx)
        metrics["size_mb"] = sum(p.stat().st_size for p in onnx_files(variant)) / 2**20
        phase = "compile"
        backend = get_backend(job.backend)
        reason = backend.unavailable_reason()  # also imports the backend's library, before the probe starts
        if reason:
            raise RuntimeError(f"backend {job.backend} is unavailable: {reason}")
        if hasattr(backend, "initialize"):  # the runtime's process-wide state is not the model's memory
            backend.initialize()
        probe = MemoryProbe()
        probe.start()
        options = dict(job.options)
        if backend.capabilities.specializes_batch:
            options["batch"] = job.batch
        t0 = time.perf_counter()
        exe = backend.compile(variant, job.target, options)
        metrics["compile_s"] = time.perf_counter() - t0
        notes = notes + list(getattr(exe, "notes", []))
        inputs = feed(data.inputs, 0, job.batch)
        if job.probe is not None:
            phase = "probe"
            bar = job.probe
            pruned = _probe(exe, inputs, bar.beat_ms, bar.margin, job.timing)
            if pruned is not None:
                metrics.update(probe_p50_ms=pruned[0], probe_runs=pruned[1], probe_beat_ms=bar.beat_ms)
                text = (
                    f"latency probe: median {pruned[0]:.3g} ms over {pruned[1]} runs cannot beat the best feasible "
                    f"{bar.beat_ms:.3g} ms (+{bar.margin - 1:.0%} for noise); not evaluated further"
                )
                exe.close()
                return WorkerResult(
                    status="pruned", metrics=WorkerMetrics.model_validate(metrics), notes=tuple(notes), error=text
                )
        phase = "timing"
        metrics.update(time_executable(exe, inputs, job.batch, job.timing))
        metrics["peak_memory_mb"] = probe.peak_mb()
        metrics["memory_method"] = probe.method
        phase = "quality"
        q = job.quality
        fixed = backend.capabilities.specializes_batch
        outputs = collect_outputs(exe, data.inputs, job.batch if fixed else q.chunk, q.limit, fixed)
        if q.save_reference is not None:
            np.savez(q.save_reference, *outputs)
        if q.reference is not None:
            with np.load(q.reference) as ref:
                reference = [ref[f"arr_{i}"] for i in range(len(ref.files))]
            metrics["fidelity"] = quality.fidelity(outputs, reference, q.fidelity_metric)
            metrics["fidelity_metric"] = q.fidelity_metric
        if q.metric and data.labels is not None:
            labels = np.asarray(data.labels)[: len(outputs[0])]
            metrics["accuracy"] = quality.accuracy(outputs[0], labels, q.metric)
            metrics["accuracy_metric"] = q.metric
        metrics["eval_samples"] = len(outputs[0])
        exe.close()
        return WorkerResult(status="ok", metrics=WorkerMetrics.model_validate(metrics), notes=tuple(notes))
    except BaseException as exc:  # everything a candidate can raise is recorded, not propagated
        text = f"{phase}: {type(exc).__name__}: {exc}".strip()
        return WorkerResult(
            status="oom" if isinstance(exc, MemoryError) or looks_like_oom(text) else "failed",
            metrics=_partial(metrics),
            notes=tuple(notes),
            error=text[:2000],
            traceback=traceback.format_exc(limit=8)[-4000:],
        )


def _partial(metrics: dict[str, Any]) -> WorkerMetrics:
    """What was measured before a failure; nothing when even that does not fit the schema."""
    try:
        return WorkerMetrics.model_validate(metrics)
    except ValueError:
        return WorkerMetrics()


def run_job(job: WorkerJob) -> WorkerResult:
    """Measure the job's candidate, or rank its nodes' quantization sensitivity when the job asks for that."""
    if job.sensitivity is not None:
        from chipfit.measure.sensitivity import rank

        return rank(job, job.sensitivity)
    return measure(job)


def main(argv: list[str] | None = None) -> int:
    """``python -m chipfit.measure.worker JOB.json RESULT.json``: a job another protocol wrote is answered
    with a failed result that says so."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m chipfit.measure.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    try:
        result = run_job(WorkerJob.from_json(Path(argv[0]).read_text()))
    except WorkerProtocolError as exc:
        result = WorkerResult(status="failed", error=f"setup: {exc}")
    out = Path(argv[1])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(result.to_json())
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    from chipfit.measure.lifetime import watch

    watch()  # a worker process dies with the run that started it, even one killed with SIGKILL
    sys.exit(main())
