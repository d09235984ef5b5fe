"""Shared fixtures: small real ONNX models built with onnx.helper, their data, fast measurement settings,
and a private chipfit home per test so nothing touches ~/.cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipfit.measure.stats import TimingPolicy
from chipfit.search.driver import MeasureSettings
from chipfit.search.space import SpaceOptions

FAST_TIMING = TimingPolicy(warmup_s=0.01, warmup_runs=2, min_samples=20, max_time_s=0.15)


@pytest.fixture(scope="session")
def peak_rates_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chipfit home holding this machine's measured peak rates: the microbenchmark (1-2 s) runs once per
    session instead of once in every test's fresh home."""
    from chipfit.hardware.microbench import peak_rates

    home = tmp_path_factory.mktemp("peak-rates")
    peak_rates(home)
    return home


@pytest.fixture(autouse=True)
def chipfit_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, peak_rates_home: Path
) -> Path:
    home = tmp_path_factory.mktemp("chipfit-home")
    for cached in peak_rates_home.iterdir():
        shutil.copy2(cached, home / cached.name)
    monkeypatch.setenv("CHIPFIT_HOME", str(home))
    monkeypatch.setenv("CHIPFIT_BACKENDS", "fault_backends")  # the faulty plug-ins of tests/fault_backends.py, opted in
    return home


def make_mlp(
    path: Path,
    n_in: int = 4,
    n_hidden: int = 16,
    n_out: int = 3,
    seed: int = 0,
    batch: str | int = "batch",
    opset: int = 17,
) -> Path:
    """x[batch, n_in] → MatMul → Add → Relu → MatMul → Add → Softmax → probs[batch, n_out]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(n_in, n_hidden)).astype(np.float32)
    b1 = rng.normal(size=(n_hidden,)).astype(np.float32)
    w2 = rng.normal(size=(n_hidden, n_out)).astype(np.float32)
    b2 = rng.normal(size=(n_out,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, n_out])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def mlp_data(
    path: Path, n: int = 64, n_in: int = 4, seed: int = 1, labels: bool = True, model: Path | None = None
) -> Path:
    """Inputs and, when asked, labels = the model's own argmax (so the original scores accuracy 1.0)."""
    x = np.random.default_rng(seed).normal(size=(n, n_in)).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"x": x}
    if labels:
        if model is not None:
            import onnxruntime as ort

            probs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            arrays["labels"] = probs.argmax(1).astype(np.int64)
        else:
            arrays["labels"] = (x[:, 0] > 0).astype(np.int64)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def mlp_npz(tmp_path: Path, mlp: Path) -> Path:
    return mlp_data(tmp_path / "eval.npz", model=mlp)


@pytest.fixture
def fast_settings() -> MeasureSettings:
    """Fast timing; no latency probe, so that which candidates get fully measured does not depend on noise."""
    return MeasureSettings(timing=FAST_TIMING, timeout_s=60, probe=False)


@pytest.fixture
def small_space() -> SpaceOptions:
    """The reference plus two candidates: the model as given and ORT level 'all', 1 thread, batch 1."""
    return SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("none", "all"),
        execution_modes=("sequential",),
        passes=(),
    )


FAST_FLAGS = [
    "--backends",
    "onnxruntime",
    "--measure-time",
    "0.15",
    "--batch-sizes",
    "1",
    "--threads",
    "1",
    "--opt-levels",
    "none,all",
    "--execution-modes",
    "sequential",
    "--passes",
    "none",
    "-q",
]


@pytest.fixture
def cli_run() -> Any:
    """Run the CLI in this process (so monkeypatching applies); returns stdout (exit 0 or 1: a result was
    printed), or stderr for bad input (exit 2). ``code`` is the exit code expected."""
    from typer.testing import CliRunner

    from chipfit.cli import app

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result.stdout if code in (0, 1) else result.stderr

    return run


@pytest.fixture(scope="session")
def mlp_module() -> Any:
    """A small torch MLP (16 → 32 → 4) and 64 samples of input for it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    return module, x


@pytest.fixture(scope="session")
def local_ray() -> Any:
    """One local Ray for the session (starting one costs ~15 s): explore's Ray tasks and Ray Serve use it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": a Ray of its own, even while another test file's cluster (test_farm's, on the other
        # xdist worker) is the machine's "current cluster", which a bare ray.init() would try to join
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
