"""The measurement worker: one process per candidate, started by ``measure.runner``.

``python -m chipfit.measure.worker JOB.json`` applies the candidate's passes (cached), compiles it with its
backend, warms up, times it until the estimate is stable or the time cap is hit, reads its peak memory,
evaluates quality, and writes RESULT.json atomically. An exception becomes ``status: failed`` (or ``oom``)
with its text; a crash or hang is classified by the parent, which sees no result file.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "measure"]


def _feed(data: dict[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    """``size`` consecutive samples from ``start``, wrapping around when the data holds fewer."""
    n = len(next(iter(data.values())))
    idx = (np.arange(start, start + size) % n) if start + size > n else slice(start, start + size)
    return {k: np.ascontiguousarray(v[idx]) for k, v in data.items()}


def _time(exe: Any, feed: dict[str, np.ndarray], batch: int, policy: Any) -> dict[str, Any]:
    from chipfit.hardware.energy import EnergyMeter
    from chipfit.measure.stats import is_stable, latency_summary

    _warm_up(exe, feed, policy)
    meter = EnergyMeter()
    joules0 = meter.read() if meter.available else 0.0
    samples: list[float] = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    deadline = start + policy.max_time_s
    while True:
        t0 = clock()
        exe.run(feed)
        samples.append((clock() - t0) / 1e6)
        n = len(samples)
        if n >= policy.max_samples:
            break
        if time.perf_counter() >= deadline and n >= policy.min_runs:
            break
        if n % 50 == 0 and is_stable(samples, policy):
            break
    out = latency_summary(samples, batch, time.perf_counter() - start)
    out["stopped_by"] = "stable" if is_stable(samples, policy) else "time cap"
    if meter.available:
        out["energy_j_per_inf"] = (meter.read() - joules0) / (len(samples) * batch)
        out["energy_counter"] = meter.method
    return out


def _warm_up(exe: Any, feed: dict[str, np.ndarray], policy: Any) -> None:
    t_end = time.perf_counter() + policy.warmup_s
    runs = 0
    while runs < policy.warmup_runs or time.perf_counter() < t_end:
        exe.run(feed)
        runs += 1


def _probe(
    exe: Any, feed: dict[str, np.ndarray], beat_ms: float, margin: float, policy: Any
) -> tuple[float, int] | None:
    """A short latency probe after a full warm-up: None when the candidate may beat ``beat_ms``, else
    (median ms, runs) showing it cannot, even allowing ``margin`` for noise. Stops early once the answer is clear."""
    _warm_up(exe, feed, policy)
    samples: list[float] = []
    deadline = time.perf_counter() + max(0.2, min(2.0, beat_ms * margin * 40 / 1000))
    while len(samples) < 40 and (len(samples) < 15 or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        exe.run(feed)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= 15 and float(np.median(samples)) <= probe_bar(beat_ms, margin):
            return None
    median = float(np.median(samples))
    return (median, len(samples)) if median > probe_bar(beat_ms, margin) else None


def probe_bar(beat_ms: float, margin: float) -> float:
    """The probe's bar: the best p50 times the margin, plus 20 µs of process-to-process jitter that matters
    only for sub-millisecond models."""
    return beat_ms * margin + 0.02


def _evaluate(
    exe: Any, data: dict[str, np.ndarray], chunk: int, limit: int | None, fixed: bool = False
) -> list[np.ndarray]:
    """Outputs on the first ``limit`` samples in chunks; with ``fixed`` (an executable compiled for one batch
    size) the last chunk is filled up with samples from the start and its extra outputs dropped."""
    n = len(next(iter(data.values())))
    n = min(n, limit) if limit else n
    collected: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        outs = exe.run(_feed(data, start, chunk if fixed else size))
        collected.append([np.asarray(o)[:size] for o in outs])
    return [np.concatenate([c[i] for c in collected], axis=0) for i in range(len(collected[0]))]


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process; returns the result dict (status, metrics, notes)."""
    from chipfit.backends import get_backend
    from chipfit.data import Dataset
    from chipfit.measure import quality
    from chipfit.measure.measurement import looks_like_oom
    from chipfit.measure.memory import MemoryProbe
    from chipfit.measure.stats import TimingPolicy
    from chipfit.passes import PassContext, apply_passes

    phase = "setup"
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if job.get("home"):  # backends keep caches (e.g. TVM's tuning database) in chipfit's home
        os.environ["CHIPFIT_HOME"] = job["home"]
    try:
        data = Dataset.load_saved(Path(job["data_dir"]), job["input_names"])
        phase = "passes"
        calib = Path(job["calib_dir"]) if job.get("calib_dir") else None
        ctx = PassContext(calib, job.get("calib_sha256"), job["input_names"])
        variant, notes = apply_passes(
            Path(job["model_path"]), job["model_sha256"], job["passes"], Path(job["variants_dir"]), ctx
        )
        from chipfit.model import onnx_files

        metrics["size_mb"] = sum(p.stat().st_size for p in onnx_files(variant)) / 2**20
        phase = "compile"
        backend = get_backend(job["backend"])
        reason = backend.unavailable_reason()  # also imports the backend's library, before the probe starts
        if reason:
            raise RuntimeError(f"backend {job['backend']} is unavailable: {reason}")
        if hasattr(backend, "initialize"):  # the runtime's process-wide state is not the model's memory
            backend.initialize()
        probe = MemoryProbe()
        probe.start()
        batch = int(job["batch"])
        options = dict(job["options"])
        if backend.capabilities.specializes_batch:
            options["batch"] = batch
        t0 = time.perf_counter()
        exe = backend.compile(variant, job.get("target", "cpu"), options)
        metrics["compile_s"] = time.perf_counter() - t0
        notes = notes + list(getattr(exe, "notes", []))
        policy = TimingPolicy(**job.get("timing", {}))
        bar = job.get("probe")
        if bar:
            phase = "probe"
            pruned = _probe(exe, _feed(data.inputs, 0, batch), float(bar["beat_ms"]), float(bar["margin"]), policy)
            if pruned is not None:
                metrics.update(probe_p50_ms=pruned[0], probe_runs=pruned[1], probe_beat_ms=bar["beat_ms"])
                text = (
                    f"latency probe: median {pruned[0]:.3g} ms over {pruned[1]} runs cannot beat the best feasible "
                    f"{bar['beat_ms']:.3g} ms (+{bar['margin'] - 1:.0%} for noise); not evaluated further"
                )
                exe.close()
                return {"status": "pruned", "metrics": metrics, "notes": notes, "error": text}
        phase = "timing"
        metrics.update(_time(exe, _feed(data.inputs, 0, batch), batch, policy))
        metrics["peak_memory_mb"] = probe.peak_mb()
        metrics["memory_method"] = probe.method
        phase = "quality"
        q = job["quality"]
        fixed = backend.capabilities.specializes_batch
        outputs = _evaluate(exe, data.inputs, batch if fixed else int(q["chunk"]), q.get("limit"), fixed)
        if q.get("save_reference"):
            np.savez(q["save_reference"], *outputs)
        if q.get("reference"):
            with np.load(q["reference"]) as ref:
                reference = [ref[f"arr_{i}"] for i in range(len(ref.files))]
            metrics["fidelity"] = quality.fidelity(outputs, reference, q["fidelity_metric"])
            metrics["fidelity_metric"] = q["fidelity_metric"]
        if q.get("metric") and data.labels is not None:
            labels = np.asarray(data.labels)[: len(outputs[0])]
            metrics["accuracy"] = quality.accuracy(outputs[0], labels, q["metric"])
            metrics["accuracy_metric"] = q["metric"]
        metrics["eval_samples"] = len(outputs[0])
        exe.close()
        return {"status": "ok", "metrics": metrics, "notes": notes, "error": None}
    except BaseException as exc:  # everything a candidate can raise is recorded, not propagated
        text = f"{phase}: {type(exc).__name__}: {exc}".strip()
        status = "oom" if isinstance(exc, MemoryError) or looks_like_oom(text) else "failed"
        return {
            "status": status,
            "metrics": metrics,
            "notes": notes,
            "error": text[:2000],
            "traceback": traceback.format_exc(limit=8)[-4000:],
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    if job.get("kind") == "sensitivity":
        from chipfit.measure.sensitivity import rank

        result = rank(job)
    else:
        result = measure(job)
    out = Path(job["result_path"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
