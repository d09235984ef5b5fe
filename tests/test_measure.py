"""The worker process: real measurements, and each way a candidate can fail without stopping the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chipfit.data import Dataset
from chipfit.measure.job import QualityJob, WorkerJob
from chipfit.measure.runner import run_isolated
from chipfit.measure.stats import latency_summary, quantile_ci
from conftest import FAST_TIMING, make_mlp


def _job(tmp_path: Path, backend: str, reference: str | None = None, save: str | None = None) -> WorkerJob:
    model = make_mlp(tmp_path / "m.onnx")
    from chipfit.model import onnx_file_hash

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    data_dir = Dataset({"x": x}, (x[:, 0] > 0).astype(np.int64)).save(tmp_path / "data")
    (tmp_path / "variants").mkdir(exist_ok=True)
    quality = QualityJob(
        chunk=8,
        metric="top1",
        fidelity_metric="cosine",
        save_reference=Path(save) if save else None,
        reference=Path(reference) if reference else None,
    )
    return WorkerJob(
        model_path=model,
        model_sha256=onnx_file_hash(model),
        backend=backend,
        options={"intra_op_num_threads": 1},
        batch=4,
        input_names=("x",),
        data_dir=data_dir,
        variants_dir=tmp_path / "variants",
        timing=FAST_TIMING,
        quality=quality,
    )


def test_ok_measurement_has_every_metric(tmp_path: Path) -> None:
    ref = str(tmp_path / "ref.npz")
    m = run_isolated(_job(tmp_path, "onnxruntime", save=ref), tmp_path / "w1", 60, None, 1)
    assert m.status == "ok", m.error
    for key in (
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p50_ci_ms",
        "p99_ci_ms",
        "samples",
        "throughput",
        "peak_memory_mb",
        "size_mb",
        "compile_s",
        "accuracy",
        "p99_reliable",
    ):
        assert key in m.metrics, key
    assert m.metrics["p50_ms"] <= m.metrics["p90_ms"] <= m.metrics["p99_ms"]
    lo, hi = m.metrics["p99_ci_ms"]
    assert lo <= m.metrics["p99_ms"] <= hi
    assert m.metrics["eval_samples"] == 40 and 0 <= m.metrics["accuracy"] <= 1
    again = run_isolated(_job(tmp_path, "onnxruntime", reference=ref), tmp_path / "w2", 60, None, 1)
    assert again.metrics["fidelity"] == pytest.approx(1.0, abs=1e-6)


def test_a_worker_that_kills_itself_is_recorded(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:crash"), tmp_path / "w", 60, None, 1)
    assert m.status == "failed" and "signal SIGKILL" in (m.error or "")


def test_a_hang_hits_the_timeout(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:hang"), tmp_path / "w", 2, None, 1)
    assert m.status == "timeout" and "2s timeout" in (m.error or "")
    assert m.wall_s < 30


def test_memory_cap_gives_oom(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:oom"), tmp_path / "w", 60, 2048, 1)
    assert m.status == "oom", m.error


def test_an_exception_is_failed_with_its_text(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:broken"), tmp_path / "w", 60, None, 1)
    assert m.status == "failed" and "compile: ValueError: unsupported operator FancyOp in node 'n7'" in (m.error or "")


def test_quantile_ci_brackets_and_summary() -> None:
    s = np.sort(np.random.default_rng(0).exponential(size=1000))
    lo, hi = quantile_ci(s, 0.99)
    assert lo <= np.percentile(s, 99) <= hi
    few = latency_summary([1.0] * 50, batch=2)
    assert few["p99_reliable"] is False and few["throughput"] == pytest.approx(2000.0)  # 2 rows per ms of running


def test_the_worker_contract_round_trips_through_json_and_pickle(tmp_path: Path) -> None:
    import json
    import pickle

    from chipfit.measure.job import LatencyProbe, SensitivityRequest, WorkerMetrics, WorkerProtocolError, WorkerResult

    job = _job(tmp_path, "onnxruntime", reference=str(tmp_path / "ref.npz")).model_copy(
        update={"probe": LatencyProbe(beat_ms=1.5, margin=1.15), "sensitivity": SensitivityRequest(quant_index=0)}
    )
    assert WorkerJob.from_json(job.to_json()) == job and pickle.loads(pickle.dumps(job)) == job
    result = WorkerResult(
        status="ok", metrics=WorkerMetrics(p50_ms=1.0, p99_ms=2.0, samples=40, p99_reliable=False), notes=("n",)
    )
    assert WorkerResult.from_json(result.to_json()) == result and pickle.loads(pickle.dumps(result)) == result
    m = result.to_measurement(wall_s=3.0)
    assert m.metrics == {"p50_ms": 1.0, "p99_ms": 2.0, "samples": 40, "p99_reliable": False} and m.notes == ["n"]
    with pytest.raises(Exception, match="frozen"):
        job.batch = 8  # type: ignore[misc]
    from chipfit.measure.job import PassStep

    step = PassStep.of({"name": "int8_dynamic", "params": {"per_channel": True}})
    chained = job.model_copy(update={"passes": (step,)})
    assert WorkerJob.from_json(chained.to_json()).passes == (step,)
    assert step.as_dict() == {"name": "int8_dynamic", "params": {"per_channel": True}}
    envelope = json.loads(chained.to_json())
    envelope["body"]["passes"] = [{"pass": "int8_dynamic"}]  # a step without its name is refused, not guessed at
    with pytest.raises(WorkerProtocolError, match="passes"):
        WorkerJob.from_json(json.dumps(envelope))


def test_a_job_of_another_protocol_or_shape_is_refused_by_name(tmp_path: Path) -> None:
    import json

    from chipfit.measure.job import PROTOCOL, WorkerProtocolError

    envelope = json.loads(_job(tmp_path, "onnxruntime").to_json())
    old = json.dumps({**envelope, "protocol": PROTOCOL - 1})
    with pytest.raises(WorkerProtocolError, match=rf"speaks protocol {PROTOCOL - 1}, this chipfit speaks {PROTOCOL}"):
        WorkerJob.from_json(old)
    typo = json.dumps({**envelope, "body": {**envelope["body"], "bacth": 4}})
    with pytest.raises(WorkerProtocolError, match="bacth"):
        WorkerJob.from_json(typo)
    # a real worker process answers an old job with a failed result that says why, not a crash
    import subprocess
    import sys

    job_file, result_file = tmp_path / "old.json", tmp_path / "result.json"
    job_file.write_text(old)
    subprocess.run([sys.executable, "-m", "chipfit.measure.worker", str(job_file), str(result_file)], check=True)
    from chipfit.measure.job import WorkerResult

    answer = WorkerResult.from_json(result_file.read_text())
    assert answer.status == "failed" and f"this chipfit speaks {PROTOCOL}" in (answer.error or "")


def test_the_protocol_version_follows_the_schema() -> None:
    from chipfit.measure.job import PROTOCOL, SCHEMAS, schema_fingerprint

    assert SCHEMAS.get(PROTOCOL) == schema_fingerprint(), (
        "WorkerJob/WorkerResult changed: bump measure.job.PROTOCOL and record the new schema_fingerprint()"
    )


class _FakeClock:
    """Nanoseconds that advance only when the executable runs: timing that no machine's load can change."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class _Ticking:
    def __init__(self, clock: _FakeClock, ms: float) -> None:
        self.clock, self.ms = clock, ms

    def run(self, feeds: dict) -> list:
        self.clock.ns += int(self.ms * 1e6)
        return []


def test_a_stable_estimate_does_not_stop_timing_before_100_samples() -> None:
    from chipfit.measure.stats import MIN_P99_SAMPLES, TimingPolicy
    from chipfit.measure.worker import time_executable

    clock = _FakeClock()
    policy = TimingPolicy(warmup_s=0.0, warmup_runs=1, min_samples=20, max_time_s=60.0)
    out = time_executable(_Ticking(clock, 1.0), {}, 1, policy, clock=clock)
    # identical 1 ms samples are stable from the first check (50 samples); the p99 needs 100 before stopping
    assert out["samples"] == MIN_P99_SAMPLES and out["p99_reliable"] is True and out["stopped_by"] == "stable"


def test_only_the_time_cap_leaves_a_p99_unreliable() -> None:
    from chipfit.measure.stats import TimingPolicy
    from chipfit.measure.worker import time_executable

    clock = _FakeClock()
    policy = TimingPolicy(warmup_s=0.0, warmup_runs=1, min_samples=20, max_time_s=2.0)
    out = time_executable(_Ticking(clock, 300.0), {}, 1, policy, clock=clock)
    assert out["samples"] == 7 and out["p99_reliable"] is False and out["stopped_by"] == "time cap"


def test_the_sensitivity_ranking_does_not_import_the_worker() -> None:
    import ast

    import chipfit.measure.sensitivity as sensitivity

    tree = ast.parse(Path(sensitivity.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "chipfit.measure.worker" not in imported  # the worker imports sensitivity: no cycle
