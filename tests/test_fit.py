"""The pipeline end to end on small real models: fit → artifact → runtime.load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import chipfit
from chipfit.errors import ArtifactError, SpecError
from chipfit.search.select import CandidateResult
from chipfit.search.space import SpaceOptions

# the reference and one variant: for tests whose claim needs a delivered model, not a choice between several
ONE_VARIANT = SpaceOptions(
    backends=("onnxruntime",),
    batch_sizes=(1,),
    threads=(1,),
    opt_levels=("all",),
    execution_modes=("sequential",),
    passes=(),
)


def _on_cpu(results: list[CandidateResult]) -> list[CandidateResult]:
    """The CPU candidates. ONNX Runtime's GPU providers add candidates that are measured on a machine with a
    GPU and listed as skipped (naming the provider) without one; the CPU ones are the same everywhere."""
    return [r for r in results if r.candidate.target == "cpu"]


def _skips_name_their_gpu_provider(results: list[CandidateResult]) -> bool:
    skipped = [r for r in results if r.source == "skipped"]
    return all(r.candidate.target != "cpu" and r.candidate.target in (r.measurement.error or "") for r in skipped)


def test_fit_delivers_an_artifact_that_loads(
    mlp: Path, mlp_npz: Path, tmp_path: Path, fast_settings, small_space
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    result = chipfit.fit(
        mlp, mlp_npz, out=out, space=small_space, settings=fast_settings, max_p99_ms=1000, max_accuracy_drop=0.01
    )
    assert result.feasible and result.winner is not None
    cpu = _on_cpu(result.candidates)  # the reference, the model as given and ORT level 'all', 1 thread, batch 1
    assert len(cpu) == 3 and result.reference is not None and result.reference in cpu
    assert result.reference.metric("accuracy") == 1.0  # the labels are the model's own predictions
    assert all(r.source == "measured" and r.measurement.ok for r in cpu)
    assert _skips_name_their_gpu_provider(result.candidates)
    assert result.winner in result.pareto
    assert {p.name for p in out.iterdir()} == {"model.onnx", "manifest.json", "results.jsonl", "report.html"}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.candidates)
    assert len([r for r in rows if r["target"] == "cpu" and r["status"] == "ok"]) == 3
    for row in rows:
        for key in (
            "backend",
            "passes",
            "options",
            "status",
            "p50_ms",
            "p99_ms",
            "throughput",
            "peak_memory_mb",
            "quality",
            "p99_reliable",
            "caveats",
        ):
            assert key in row, key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["runtime_options"] == result.winner.candidate.options
    assert {c["constraint"]: c["held"] for c in manifest["constraints"]} == {
        "max_p99_ms": True,
        "max_accuracy_drop": True,
    }
    assert manifest["environment"]["cpu"]["cores_in_quota"] >= 1 and manifest["chipfit_version"] == chipfit.__version__
    session = chipfit.runtime.load(out)
    assert session.input_names == ["x"] and session.output_names == ["probs"]
    x = np.load(mlp_npz)["x"][:5]
    import onnxruntime as ort

    expected = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run({"x": x})[0], expected, rtol=1e-5, atol=1e-6)
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Constraints" in html and "max_p99_ms" in html
    for network_load in ("<script", "<link", 'src="http', 'href="http', "@import", "url(http"):
        assert network_load not in html, network_load  # renders offline


def test_runtime_load_checks_the_hash(mlp: Path, mlp_npz: Path, tmp_path: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    chipfit.fit(mlp, mlp_npz, out=out, space=ONE_VARIANT, settings=fast_settings)
    with open(out / "model.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ArtifactError, match=r"model.onnx' does not match the sha256 in manifest.json"):
        chipfit.runtime.load(out)
    with pytest.raises(ArtifactError, match=r"not a chipfit artifact"):
        chipfit.runtime.load(tmp_path)


def test_infeasible_run_saves_everything_and_lists_near_misses(
    mlp: Path, mlp_npz: Path, tmp_path: Path, fast_settings, small_space
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    result = chipfit.fit(mlp, mlp_npz, out=out, space=small_space, settings=fast_settings, max_p50_ms=1e-6)
    assert not result.feasible and result.winner is None
    assert result.near_misses and result.near_misses[0].violations[0].constraint == "max_p50_ms"
    measured = [r for r in result.candidates if r.source == "measured"]
    assert len(_on_cpu(measured)) == 3 and chipfit.Store().count(result.model.sha256) == len(measured)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["feasible"] is False and not (out / "model.onnx").exists()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["status"] != "skipped"]) == len(measured)
    with pytest.raises(ArtifactError, match=r"holds no model: no candidate met the constraints"):
        chipfit.runtime.load(out)


def test_rerun_reuses_stored_results(mlp: Path, mlp_npz: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    first = chipfit.fit(mlp, mlp_npz, space=ONE_VARIANT, settings=fast_settings)
    second = chipfit.fit(mlp, mlp_npz, space=ONE_VARIANT, settings=fast_settings)
    assert {r.source for r in first.candidates} - {"skipped"} == {"measured"}
    assert {r.source for r in second.candidates} - {"skipped"} == {"stored"}
    assert [r.metric("p50_ms") for r in first.candidates] == [r.metric("p50_ms") for r in second.candidates]


def test_fidelity_without_labels_and_fidelity_metrics(mlp: Path, tmp_path: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    from conftest import mlp_data

    data = mlp_data(tmp_path / "nolabels.npz", labels=False)
    for metric in ("cosine", "agreement", "max_rel_error"):
        result = chipfit.fit(
            mlp, data, space=ONE_VARIANT, settings=fast_settings, min_fidelity=0.99, fidelity_metric=metric
        )
        assert result.feasible
        assert all(
            r.metric("fidelity_metric") == metric
            for r in result.candidates
            if not r.candidate.reference and r.source != "skipped"
        )
        assert result.winner.metric("fidelity") == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(SpecError, match=r"--max-accuracy-drop needs labels"):
        chipfit.fit(mlp, data, space=ONE_VARIANT, settings=fast_settings, max_accuracy_drop=0.01)


def test_a_crashing_candidate_is_recorded_and_the_run_goes_on(mlp: Path, mlp_npz: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    space = SpaceOptions(
        backends=("onnxruntime", "fault_backends:crash", "fault_backends:broken"),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("all",),
        execution_modes=("sequential",),
        passes=(),
    )
    result = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings)
    status = {r.candidate.backend: r.measurement.status for r in result.candidates}
    assert status["fault_backends:crash"] == "failed" and status["fault_backends:broken"] == "failed"
    assert result.winner is not None and result.winner.candidate.backend == "onnxruntime"


def test_batch_sizes_and_fixed_batch(mlp: Path, mlp_npz: Path, tmp_path: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    from conftest import make_mlp

    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1, 4),
        threads=(1,),
        opt_levels=("all",),
        execution_modes=("sequential",),
        passes=(),
    )
    result = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings, objective="throughput")
    batches = sorted(r.candidate.batch for r in result.candidates if r.measurement.ok)
    assert batches == [1, 1, 4, 4]  # reference and candidate, each at both batch sizes
    ok = [r for r in result.candidates if r.measurement.ok]
    best = max(ok, key=lambda r: r.measurement.metrics["throughput"])
    assert result.winner is not None and result.winner.candidate == best.candidate  # the objective decides
    for r in ok:  # throughput is rows per second of running: batch / mean latency
        m = r.measurement.metrics
        assert m["throughput"] == pytest.approx(r.candidate.batch * 1e3 / m["mean_ms"], rel=1e-6)
    fixed = make_mlp(tmp_path / "fixed.onnx", batch=1)
    result = chipfit.fit(fixed, mlp_npz, space=space, settings=fast_settings)
    assert {r.candidate.batch for r in result.candidates} == {1}


def test_time_budget_skips_the_rest(mlp: Path, mlp_npz: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("none", "basic", "all"),
        execution_modes=("sequential",),
        passes=(),
    )
    result = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings, time_budget=0.01)
    skipped = [r for r in result.candidates if r.source == "skipped"]
    budget = [r for r in skipped if "time budget" in (r.measurement.error or "")]
    assert budget and _skips_name_their_gpu_provider([r for r in skipped if r not in budget])
    assert result.reference is not None and result.reference.measurement.ok


def test_a_model_onnxruntime_cannot_run_names_the_node(tmp_path: Path, fast_settings, small_space) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    from chipfit.errors import ModelError

    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="frob_1", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save_model(model, str(path))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    with pytest.raises(  # found by opening ONNX Runtime's session before the search, not after it
        ModelError, match=r"custom.onnx\) cannot be run by ONNX Runtime.*op 'Frobnicate' of domain 'com.example'"
    ):
        chipfit.fit(path, tmp_path / "d.npz", space=small_space, settings=fast_settings)


def test_separate_calibration_data_leaves_all_data_for_evaluation(
    mlp: Path, mlp_npz: Path, tmp_path: Path, fast_settings
) -> None:  # type: ignore[no-untyped-def]
    from conftest import mlp_data

    reference_only = SpaceOptions(backends=("onnxruntime",), batch_sizes=(1,), opt_levels=(), passes=())
    calib = mlp_data(tmp_path / "calib.npz", n=16, labels=False)
    result = chipfit.fit(mlp, mlp_npz, calib_data=calib, space=reference_only, settings=fast_settings)
    assert [r.candidate.reference for r in result.candidates if r.source == "measured"] == [True]
    assert result.reference.metric("eval_samples") == 64  # all of --data; without --calib-data 20% is held out
    split = chipfit.fit(mlp, mlp_npz, space=reference_only, settings=fast_settings)
    assert split.reference.metric("eval_samples") == 64 - 12


def test_a_p99_bound_held_on_fewer_than_100_samples_is_flagged_everywhere(
    mlp: Path, mlp_npz: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from rich.console import Console

    from chipfit.cli.output import print_fit_result
    from chipfit.search.driver import MeasureSettings
    from conftest import FAST_TIMING

    # a time cap so short that timing stops at the policy's minimum of runs: the p99 rests on 5 samples
    settings = MeasureSettings(timing=replace(FAST_TIMING, max_time_s=1e-9, min_runs=5), timeout_s=60, probe=False)
    out = tmp_path / "out"
    result = chipfit.fit(mlp, mlp_npz, out=out, space=ONE_VARIANT, settings=settings, max_p99_ms=1000)
    w = result.winner
    assert w is not None and w.metric("samples") == 5 and w.p99_reliable is False
    assert w.caveats and "p99 from only 5 samples, fewer than 100: not reliable" in w.caveats[0]
    assert result.to_dict()["winner"]["caveats"] == w.caveats
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["p99_reliable"] is False for r in rows if r["status"] == "ok")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "not reliable" in next(c for c in manifest["constraints"] if c["constraint"] == "max_p99_ms")["note"]
    html = (out / "report.html").read_text()
    assert "Caution: max_p99_ms held on a p99 from only 5 samples" in html and "p99* = from fewer than 100" in html
    console = Console(record=True, width=200)
    print_fit_result(console, result)
    text = console.export_text()
    assert "caution: max_p99_ms held on a p99 from only 5 samples" in text and "p99* = from fewer than 100" in text
    # with time enough for 100 samples the same bound carries no caution
    firm = chipfit.fit(mlp, mlp_npz, space=ONE_VARIANT, settings=replace(settings, timing=FAST_TIMING, fresh=True),
                       max_p99_ms=1000)  # fmt: skip
    assert firm.winner is not None and firm.winner.p99_reliable and not firm.winner.caveats


def test_a_time_budget_is_a_bound_on_the_run(mlp: Path, mlp_npz: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    """Each candidate costs 10 s on an injected clock: with 35 s, the reference and two variants run (to 30 s);
    the next is not started, for it would end at 40 s, past the budget (the old rule started it at 30 s)."""
    from dataclasses import replace

    now = [0.0]
    in_store: set[str] = set()  # a stored result takes no time

    def on_event(event: str, c, r, i: int, n: int) -> None:  # type: ignore[no-untyped-def]
        if event == "start" and c.id not in in_store:
            now[0] += 10.0

    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("none", "basic", "extended", "all"),
        execution_modes=("sequential",),
        passes=(),
    )
    settings = replace(fast_settings, clock=lambda: now[0], timeout_s=60)
    result = chipfit.fit(mlp, mlp_npz, space=space, settings=settings, time_budget=35, callback=on_event)
    cpu = _on_cpu(result.candidates)
    measured = [r for r in cpu if r.source == "measured"]
    held = [r for r in cpu if "time budget of 35s" in (r.measurement.error or "")]
    assert len(measured) == 3 and measured[0].candidate.reference and len(held) == 2, [r.source for r in cpu]
    assert now[0] <= 35 and "5s left, less than a candidate takes here (~10s" in (held[0].measurement.error or "")
    # stored results are always used: a rerun reuses the three and measures the other two within the budget
    now[0] = 0.0
    in_store.update(r.candidate.id for r in measured)
    again = chipfit.fit(mlp, mlp_npz, space=space, settings=settings, time_budget=35, callback=on_event)
    sources = [r.source for r in _on_cpu(again.candidates)]
    assert sources.count("stored") == 3 and sources.count("measured") == 2 and now[0] == 20, (sources, now)


def test_threads_apply_to_every_backend() -> None:
    """--threads 1 on 2 cores: OpenVINO and TVM, which offer the machine's thread count, run at 1 thread."""
    from chipfit.backends import available_backends
    from chipfit.model import load_model
    from chipfit.search.space import build_space
    from conftest import make_mlp

    have = [b for b in ("openvino", "tvm") if b in available_backends()]
    if not have:
        pytest.skip("neither OpenVINO nor TVM is installed")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        m = load_model(make_mlp(Path(tmp) / "m.onnx"))
        one = build_space(m, SpaceOptions(backends=tuple(have), threads=(1,), tune_trials=2), 2)
        two = build_space(m, SpaceOptions(backends=tuple(have), threads=(1, 2), tune_trials=2), 2)
    for b in have:
        assert {c.options["threads"] for c in one if c.backend == b} == {1}, b
        assert {c.options["threads"] for c in two if c.backend == b} == {1, 2}, b
    assert len({c.id for c in one}) == len(one)  # no option listed twice
