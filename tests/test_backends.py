"""Backends: the conformance kit on every CPU backend, the kit against deliberately broken backends,
`chipfit backends`, missing libraries, and each backend's winner reopened by chipfit.runtime.load."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from chipfit.backends import backend_info, get_backend
from chipfit.backends.base import Capabilities
from chipfit.backends.onnxruntime import backend as ort
from chipfit.testing.conformance import check_backend

CPU_BACKENDS = ["onnxruntime", "null", "openvino", "tvm", "torch"]


def _needs(name: str) -> None:
    info = backend_info(name)
    if not info.available:
        pytest.skip(f"{name}: {info.reason}")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_every_cpu_backend_passes_the_conformance_kit(name: str) -> None:
    _needs(name)
    report = check_backend(name)
    assert report.passed, report.text()
    assert len(report.checks) == 7


def test_torch_compile_passes_the_conformance_kit() -> None:
    _needs("torch")
    report = check_backend("torch", options={"mode": "compile"})
    assert report.passed, report.text()


@pytest.mark.parametrize("options", [{"mode": "eager"}, {"mode": "compile"}, {"mode": "eager", "autocast": "bfloat16"}])
def test_torch_on_a_cuda_gpu_passes_the_conformance_kit(options: dict) -> None:
    _needs("torch")
    from chipfit.backends.torch import cuda_available

    if not cuda_available():
        pytest.skip("torch sees no CUDA GPU here (the farm's GPU nodes run this path)")
    dtype = "bfloat16" if options.get("autocast") else "float32"
    report = check_backend("torch", target="cuda", dtype=dtype, options=options)
    assert report.passed, report.text()


class _Wrapper:
    """ONNX Runtime with one deliberate defect, chosen by ``defect``."""

    def __init__(self, defect: str, caps: Capabilities | None = None) -> None:
        self.name, self.defect = f"broken-{defect}", defect
        self.capabilities = caps or Capabilities(devices=("cpu",), dtypes=("float32",), dynamic_shapes=True)

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str | None:
        return "0"

    def devices(self) -> list[str]:
        return ["gpu"] if self.defect == "devices" else ["cpu"]

    def compile(self, path: Path, target: str, options: Mapping[str, Any]) -> Any:
        if self.defect == "swallows_ops" and any(n.domain == "chipfit.test" for n in onnx.load(str(path)).graph.node):
            return _Const()
        if self.defect == "any_target":
            target = "cpu"
        exe = ort.compile(path, target, options)
        if self.defect == "static":  # claims dynamic shapes, runs only batch 5
            run = exe.run
            exe.run = lambda feeds: run(feeds) if len(next(iter(feeds.values()))) == 5 else [np.zeros((1,))]
        if self.defect == "wrong":
            run = exe.run
            exe.run = lambda feeds: [o + 0.01 for o in run(feeds)]
        return exe


class _Const:
    input_names, output_names = ["x"], ["y"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.zeros_like(feeds["x"])]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("defect", "failed"),
    [
        ("wrong", "mlp: outputs match"),
        ("static", "mlp: outputs match"),
        ("swallows_ops", "unsupported operator NoSuchOp"),
        ("any_target", "an unsupported target is refused"),
        ("devices", "identity"),
    ],
)
def test_the_kit_catches_a_broken_backend(defect: str, failed: str) -> None:
    report = check_backend(_Wrapper(defect))
    assert not report.passed
    assert any(c.name.startswith(failed) for c in report.failures), report.text()


def test_the_kit_catches_a_false_int8_claim() -> None:
    report = check_backend(get_backend("null").__class__())  # honest: passes
    assert report.passed, report.text()
    liar = get_backend("null").__class__()
    liar.capabilities = Capabilities(dtypes=("float32", "int8"))  # the reference interpreter has no opset-17 QDQ
    report = check_backend(liar)
    assert [c.name for c in report.failures] == ["int8: a quantized graph runs when capabilities claim int8"]


def test_backends_json_lists_every_backend(cli_run: Any) -> None:
    rows = json.loads(cli_run("backends", "--json"))
    assert [r["name"] for r in rows] == ["onnxruntime", "openvino", "tvm", "torch", "null"]
    for r in rows:
        assert set(r) == {"name", "available", "reason", "version", "devices"}
        assert r["available"] == (r["reason"] is None)
        if r["available"]:
            assert r["version"] and r["devices"]
    table = cli_run("backends")
    assert "onnxruntime" in table and "available" in table


def test_a_missing_library_gives_the_install_line(monkeypatch: pytest.MonkeyPatch, cli_run: Any) -> None:
    monkeypatch.setitem(sys.modules, "tvm", None)  # import tvm now raises ImportError
    info = backend_info("tvm")
    assert not info.available and "pip install 'chipfit[tvm]'" in (info.reason or "")
    out = cli_run("backends", "--json")
    assert next(r for r in json.loads(out) if r["name"] == "tvm")["available"] is False
    err = cli_run("fit", "m.onnx", "--data", "d.npz", "--backends", "tvm", code=2)
    assert "--backends: backend 'tvm' is not available here" in err and "chipfit[tvm]" in err
    assert "Traceback" not in err


def _celu_model(path: Path) -> Path:
    """A Celu layer: ONNX Runtime and OpenVINO run it, TVM's Relax frontend has no converter for it."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Celu", ["h"], ["y"])],
        "celu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save_model(proto, str(path))
    return path


def test_an_operator_a_backend_cannot_compile_fails_that_candidate_only(tmp_path: Path, fast_settings: Any) -> None:
    _needs("tvm")
    from chipfit import fit
    from chipfit.search.space import SpaceOptions

    model = _celu_model(tmp_path / "celu.onnx")
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    space = SpaceOptions(
        backends=("onnxruntime", "tvm"),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("none",),
        execution_modes=("sequential",),
        passes=(),
    )
    result = fit(model, {"x": x}, space=space, settings=fast_settings, home=tmp_path / "home")
    tvm = [r for r in result.candidates if r.candidate.backend == "tvm" and r.measurement.status == "failed"]
    assert tvm and all("Celu" in (r.measurement.error or "") for r in tvm)
    assert result.winner is not None and result.winner.candidate.backend == "onnxruntime"


@pytest.mark.parametrize("name", ["openvino", "torch", "tvm"])
def test_a_winner_of_each_backend_is_reopened_by_runtime_load(
    name: str, tmp_path: Path, fast_settings: Any, mlp_module: Any
) -> None:
    _needs(name)
    import chipfit
    from chipfit.search.space import SpaceOptions

    module, x = mlp_module
    space = SpaceOptions(backends=(name,), batch_sizes=(1,), passes=())
    result = chipfit.fit(
        module,
        {"input": x},
        example_inputs=(x[:2],),
        space=space,
        settings=fast_settings,
        out=tmp_path / "out",
        home=tmp_path / "home",
    )
    assert result.winner is not None, [
        (r.candidate.label(), r.measurement.error, r.violations) for r in result.candidates
    ]
    assert result.winner.candidate.backend == name
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backend"] == name
    options = manifest["runtime_options"]
    assert options.get("precision") == result.winner.candidate.options.get("precision")  # reopened as measured
    loaded = chipfit.runtime.load(tmp_path / "out")
    import torch

    from chipfit.measure.quality import fidelity
    from chipfit.search.select import precision_of
    from chipfit.spec import DEFAULT_MIN_FIDELITY

    with torch.no_grad():
        want = module(torch.from_numpy(x[:8])).numpy()
    got = np.concatenate([loaded.run({loaded.input_names[0]: x[i : i + 1]})[0] for i in range(8)])  # TVM: batch 1
    if precision_of(result.winner.candidate) == "fp32":  # the same arithmetic: the module's outputs
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:  # e.g. OpenVINO bf16 where the CPU has AVX512-BF16: held to, and reopened within, the default floor
        assert result.winner.quality_floor == DEFAULT_MIN_FIDELITY
        assert fidelity([got], [want], "cosine") >= DEFAULT_MIN_FIDELITY
    if name == "tvm":
        assert (tmp_path / "out" / "model.so").exists() and manifest["runtime_options"]["library"] == "model.so"
    if name == "torch":
        assert (tmp_path / "out" / "model.pt2").exists()
