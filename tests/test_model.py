from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipfit.errors import ModelError
from chipfit.model import load_model
from conftest import make_mlp


def test_onnx_file_ingest_stats_and_hash(tmp_path: Path) -> None:
    m = load_model(make_mlp(tmp_path / "m.onnx", n_in=4, n_hidden=16, n_out=3))
    assert [t.name for t in m.inputs] == ["x"] and m.inputs[0].shape == ("batch", 4)
    assert m.dynamic_batch
    assert m.stats.params == 4 * 16 + 16 + 16 * 3 + 3
    by_name = {n.name: n for n in m.stats.nodes}
    assert by_name["fc1"].flops == 2 * 4 * 16 and by_name["fc2"].flops == 2 * 16 * 3
    assert by_name["fc1"].bytes == (4 + 4 * 16 + 16) * 4  # x, w1 in; h0 out (batch counted as 1)
    assert m.stats.unknown_nodes == 0
    assert load_model(m.path).sha256 == m.sha256


def test_fixed_batch_is_reported(tmp_path: Path) -> None:
    m = load_model(make_mlp(tmp_path / "m.onnx", batch=1))
    assert not m.dynamic_batch


def test_external_data(tmp_path: Path) -> None:
    src = onnx.load(str(make_mlp(tmp_path / "m.onnx", n_in=64, n_hidden=64)))
    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save_model(src, str(ext), save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = load_model(ext)
    assert (ext.parent / "weights.bin").exists() and m.stats.params == 64 * 64 + 64 + 64 * 3 + 3
    (ext.parent / "weights.bin").unlink()
    with pytest.raises(ModelError, match=r"references external data 'weights.bin', which is missing"):
        load_model(ext)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"Model file .*nope.onnx' does not exist"):
        load_model(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff\xff")
    with pytest.raises(ModelError, match=r"bad.onnx"):
        load_model(bad)


def test_unknown_op_names_the_node_and_op(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], name="n7")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])],
    )
    p = tmp_path / "fancy.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(ModelError, match=r"fancy.onnx' fails the ONNX checker.*FancyOp"):
        load_model(p)


def test_shape_mismatch_names_the_node(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="bad_matmul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])],
        [w],
    )
    p = tmp_path / "shape.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(ModelError, match=r"shape.onnx' fails the ONNX checker.*bad_matmul"):
        load_model(p)


def test_model_input_and_output_names_in_order(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["b_in", "a_in"], ["s"]),
            helper.make_node("MatMul", ["s", "w"], ["z_out"]),
            helper.make_node("Relu", ["z_out"], ["a_out"]),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("b_in", "a_in")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("z_out", "a_out")],
        [w],
    )
    graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2]))  # an initializer: not fed
    p = tmp_path / "two.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    m = load_model(p)
    assert m.input_names == ["b_in", "a_in"] and m.output_names == ["z_out", "a_out"]  # the graph's order, not sorted
    import onnxruntime as ort

    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    assert m.input_names == [i.name for i in sess.get_inputs()]
    assert m.output_names == [o.name for o in sess.get_outputs()]


torch = pytest.importorskip("torch", reason="torch ingest needs the [torch] extra")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).flatten(1))


class _DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export (dynamo) cannot capture it; TorchScript traces it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_torch_module_with_dynamic_batch() -> None:
    net = _Net().eval()
    m = load_model(net, (torch.randn(2, 1, 8, 8),))
    assert m.inputs[0].name == "image" and m.dynamic_batch and not m.notes
    x = torch.randn(5, 1, 8, 8)
    np.testing.assert_allclose(_ort(m.path, {"image": x.numpy()}), net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert m.stats.op_counts.get("Conv") == 1


class _SameEitherWay(torch.nn.Module):
    """Data-dependent control flow whose branches compute the same: dynamo refuses it, a trace is faithful."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(x * 1.0)


class _Saturates(torch.nn.Module):
    """A branch no generated input reaches (values above 10), but evaluation data does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():  # fixed weights: on x = 20 the outputs are 80 and -80, so the clamp changes one
            self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.max() > 10:
            return self.fc(x).clamp(max=0.0)
        return self.fc(x)


def _trace(module: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}, opset_version=17
        )
    return path


def test_torchscript_fallback_says_why_and_is_checked_against_the_module() -> None:
    m = load_model(_SameEitherWay(), (torch.ones(3, 4),))
    assert m.notes and "dynamo=True) failed" in m.notes[0] and "TorchScript" in m.notes[0]
    assert any("TorchScript exporter warned" in n for n in m.notes)  # the tracer's warnings are kept, not silenced
    assert m.dynamic_batch


def test_a_trace_of_one_branch_of_data_dependent_control_flow_is_refused() -> None:
    # traced with a positive sum: the export always takes `fc(x)`, the module negates for a negative sum
    with pytest.raises(
        ModelError, match=r"export of _DataDependent computes something else.*negated.*differs by up to"
    ):
        load_model(_DataDependent(), (torch.ones(3, 4),))


def test_verify_export_compares_the_export_with_the_module(tmp_path: Path) -> None:
    from chipfit.torch_export import verify_export

    net = _Net().eval()
    assert verify_export(net, load_model(net, (torch.randn(2, 1, 8, 8),)).path, (torch.randn(2, 1, 8, 8),)) < 1e-4
    dd = _DataDependent().eval()
    traced = _trace(dd, torch.ones(3, 4), tmp_path / "dd.onnx")
    assert verify_export(dd, traced, (torch.ones(3, 4),), generate=False) < 1e-4  # agrees where it was traced
    with pytest.raises(ModelError, match=r"_DataDependent.*on the example inputs negated.*differs by up to [0-9.]+"):
        verify_export(dd, traced, (torch.ones(3, 4),))
    with pytest.raises(ModelError, match=r"_DataDependent.*on the evaluation data"):
        verify_export(dd, traced, None, data={"x": -np.ones((5, 4), np.float32)})


def test_fit_checks_a_torch_export_on_the_evaluation_data_before_measuring(tmp_path: Path) -> None:
    import chipfit

    module = _Saturates().eval()
    m = load_model(module, (torch.ones(3, 4),))  # generated inputs stay below 10: the trace passes those
    assert "TorchScript" in m.notes[0]
    data = {"x": np.full((8, 4), 20.0, np.float32)}
    with pytest.raises(ModelError, match=r"_Saturates.*on the evaluation data"):
        chipfit.fit(m, data, home=tmp_path / "home", store=f"sqlite:///{tmp_path / 's.db'}")


def test_exported_program_file(tmp_path: Path) -> None:
    net = _Net().eval()
    ep = torch.export.export(net, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    m = load_model(tmp_path / "net.pt2")
    assert m.dynamic_batch
    x = torch.randn(3, 1, 8, 8)
    np.testing.assert_allclose(
        _ort(m.path, {m.inputs[0].name: x.numpy()}), net(x).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_torch_module_without_inputs_and_bad_pt2(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"needs example inputs"):
        load_model(_Net())
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"bad.pt2' is not a loadable ExportedProgram"):
        load_model(bad)


def test_ingest_and_the_export_check_leave_the_module_in_its_training_mode() -> None:
    from chipfit.torch_export import verify_export

    net = _Net().train()
    m = load_model(net, (torch.randn(2, 1, 8, 8),))
    assert net.training  # the export ran in eval mode and put the module back
    verify_export(net, m.path, (torch.randn(2, 1, 8, 8),))
    assert net.training
    frozen = _Net().eval()
    load_model(frozen, (torch.randn(2, 1, 8, 8),))
    assert not frozen.training  # and a module in eval mode stays there


def test_a_one_row_example_keeps_the_dynamic_batch_in_onnx_and_for_the_torch_backend() -> None:
    from chipfit.backends.torch import program_path
    from chipfit.torch_export import load_exported_program

    net = _Net().eval()
    m = load_model(net, (torch.randn(1, 1, 8, 8),))  # torch.export alone would fix the batch at 1
    assert m.dynamic_batch and not m.notes, m.notes
    program = load_exported_program(program_path(m.path)).module()  # what the torch backend runs
    for rows in (1, 5):
        x = torch.randn(rows, 1, 8, 8)
        want = net(x).detach().numpy()
        np.testing.assert_allclose(_ort(m.path, {"image": x.numpy()}), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(program(x).detach().numpy(), want, rtol=1e-4, atol=1e-5)


class _OneRowOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(4))  # a batch of one row at most


def test_a_module_that_cannot_take_two_rows_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelError, match=r"_OneRowOnly fails on two rows .*make forward\(\) accept any number of rows"):
        load_model(_OneRowOnly(), (torch.ones(1, 4),))


def test_the_torch_backend_says_why_a_module_torch_export_refused_is_not_measured() -> None:
    from chipfit.backends import get_backend

    m = load_model(_SameEitherWay(), (torch.ones(3, 4),))  # ONNX via the TorchScript exporter; torch.export fails
    reason = get_backend("torch").option_space(m, 1).unsuitable
    assert reason and reason.startswith("torch: torch.export could not capture _SameEitherWay"), reason
    assert "pass a .pt2 saved with torch.export.save" in reason and "given as ONNX" not in reason


def test_fit_measures_the_torch_backend_for_a_module_given_a_one_row_example(
    tmp_path: Path, fast_settings: Any, mlp_module: Any
) -> None:
    import chipfit
    from chipfit.search.space import SpaceOptions

    module, x = mlp_module
    space = SpaceOptions(backends=("torch", "onnxruntime"), batch_sizes=(1,), opt_levels=("none",), passes=())
    result = chipfit.fit(
        module, {"input": x}, example_inputs=(x[:1],), space=space, settings=fast_settings, home=tmp_path / "home"
    )
    rows = [r for r in result.candidates if r.candidate.backend == "torch"]
    torch_rows = [r for r in rows if r.candidate.target == "cpu"]
    gpu_rows = [r for r in rows if r.candidate.target == "cuda"]  # listed with the reason where torch sees no GPU
    from chipfit.backends.torch import cuda_available

    assert cuda_available() or all(
        r.source == "skipped" and "no CUDA GPU" in (r.candidate.skip or "") for r in gpu_rows
    )
    assert torch_rows and all(r.measurement.status == "ok" for r in torch_rows), [
        (r.candidate.label(), r.candidate.skip, r.measurement.error) for r in torch_rows
    ]
