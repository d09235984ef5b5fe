"""Untrusted input to ``chipfit fit`` (issue 14, defects 3, 6 and 7): YAML bombs, mislabelled data files,
backend names, labels the metric cannot score, models ONNX Runtime cannot open, and the order of the checks.
Each case must end in one clear exit-2 line before anything is measured: no traceback, no hang."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from chipfit.backends import get_backend
from chipfit.errors import BackendUnavailableError
from chipfit.store import Store
from conftest import FAST_FLAGS

CHIPFIT = [sys.executable, "-m", "chipfit.cli"]


def _chipfit(*args: str | Path, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """A real process, for what an in-process run cannot survive: a hang (TimeoutExpired fails the test)."""
    return subprocess.run([*CHIPFIT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in text, text
    return lines[0]


def _bomb(key: str, levels: int = 9) -> str:
    """Nine levels of nine aliases each: ~400 bytes that expand to 9**9 (387 million) strings."""
    lines = [f"{key}:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"  - &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_spec_exits_2_at_once(tmp_path: Path, mlp: Path, mlp_npz: Path) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_bomb("objective"))
    assert spec.stat().st_size < 650
    p = _chipfit("fit", mlp, "--data", mlp_npz, "--spec", spec)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    line = _one_line(p.stderr)
    assert "aliases" in line and "bomb.yaml" in line and "lol" * 3 not in line


def test_alias_bombs_under_every_scalar_key_are_refused(tmp_path: Path) -> None:
    """metric:, max_p99_ms: and a constraints: section too; one process so a hang fails by its timeout."""
    files = []
    for key in ("metric", "max_p99_ms", "constraints:\n  max_p50_ms"):
        f = tmp_path / f"{key[:6]}.yaml"
        f.write_text(_bomb(key).replace("\n  - ", "\n    - ") if ":" in key else _bomb(key))
        files.append(str(f))
    code = (
        "import sys\nfrom chipfit.errors import SpecError\nfrom chipfit.spec import load_spec\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n        load_spec(f)\n    except SpecError as e:\n        print(e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3 and all("aliases (*name) are not accepted" in ln for ln in lines), p.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("objective: [latency, size]\n", "got a list of 2 item(s)"),
        ("objective: " + "x" * 5000 + "\n", "... (5002 characters)"),
        ("max_p99_ms: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
        ("max_p99_ms: 20\n" + "# padding\n" * 7000, "larger than 64 KiB"),
    ],
    ids=["list", "long-string", "deep-nesting", "oversized"],
)
def test_malformed_spec_files(tmp_path: Path, mlp: Path, cli_run: Any, text: str, expected: str) -> None:
    """Non-scalars are named, not formatted; nesting and the file's size are bounded (a 5000-deep list
    overflowed PyYAML's recursion; an oversized file was read whole). The data does not exist, so an error
    about the spec proves the spec was checked first."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    line = _one_line(cli_run("fit", str(mlp), "--data", str(tmp_path / "none.npz"), "--spec", str(spec), code=2))
    assert expected in line and "spec.yaml" in line
    assert len(line) < 600


def _npy_named_npz(path: Path) -> None:
    np.save(path.with_suffix(".npy"), np.zeros((8, 4), np.float32))
    path.with_suffix(".npy").rename(path)


def _object_npz(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_npy_named_npz, "is a single .npy array, not an .npz archive"),
        (lambda p: p.write_bytes(b"not a zip at all"), "not an .npz archive"),
        (lambda p: p.write_bytes(pickle.dumps({"x": np.zeros((8, 4))})), "not an .npz archive"),
        (_object_npz, "holds an object array"),
    ],
    ids=["npy-named-npz", "not-zip", "pickle", "object-array"],
)  # fmt: skip
def test_mislabelled_data_files(tmp_path: Path, mlp: Path, cli_run: Any, make: Any, expected: str) -> None:
    """The file kind is checked before np.load (a .npy named .npz gave a traceback), nothing is unpickled,
    and no message suggests allow_pickle= (numpy's own advice for a non-zip file)."""
    data = tmp_path / "eval.npz"
    make(data)
    line = _one_line(cli_run("fit", str(mlp), "--data", str(data), *FAST_FLAGS, code=2))
    assert expected in line and "eval.npz" in line
    assert "allow_pickle" not in line


def test_unknown_backend_names_are_refused_without_importing(mlp: Path, mlp_npz: Path, cli_run: Any) -> None:
    line = _one_line(cli_run("fit", str(mlp), "--data", str(mlp_npz), "--backends", "os:system", code=2))
    assert "unknown backend 'os:system'" in line and "onnxruntime, openvino, tvm, torch, null" in line
    assert "CHIPFIT_BACKENDS" in line  # the opt-in for a plug-in
    sys.modules.pop("this", None)
    with pytest.raises(BackendUnavailableError, match="unknown backend 'this:nothing'"):
        get_backend("this:nothing")  # as a manifest's "backend" would name it
    assert "this" not in sys.modules  # refused by name: the module was never imported


def test_a_plugin_backend_loads_only_once_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from chipfit.backends import register_backend

    monkeypatch.setenv("CHIPFIT_BACKENDS", "")
    with pytest.raises(BackendUnavailableError, match="must be opted in"):
        get_backend("fault_backends:broken")
    register_backend("fault_backends:broken")
    assert os.environ["CHIPFIT_BACKENDS"] == "fault_backends:broken"  # measurement workers inherit it
    assert get_backend("fault_backends:broken").unavailable_reason() is None  # imported, usable
    with pytest.raises(BackendUnavailableError, match="must be opted in"):
        get_backend("fault_backends:crash")  # one attribute opted in, not its module


@pytest.mark.parametrize(
    ("labels", "flags", "expected"),
    [
        (np.array(["cat", "dog"] * 32), (), "has dtype <U3, not numbers"),
        (np.zeros((64, 3), np.int64), (), "has shape (64, 3); metric top1 needs one integer class id"),
        (np.full(64, 7), (), "class ids outside 0..2"),
        (np.full(64, 0.5), ("--metric", "top1"), "non-integer values"),
        (np.zeros((64, 2), np.float32), ("--metric", "mse"), "2 value(s) per sample"),
    ],
    ids=["strings", "2d", "out-of-range", "fractional-top1", "mse-shape"],
)
def test_labels_the_metric_cannot_score_stop_before_measuring(
    tmp_path: Path, mlp: Path, cli_run: Any, labels: np.ndarray, flags: tuple[str, ...], expected: str
) -> None:
    """These failed in every worker after the whole search, blaming the model; now nothing is measured."""
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32), labels=labels)
    db = tmp_path / "store.db"
    line = _one_line(
        cli_run("fit", str(mlp), "--data", str(data), "--store", f"sqlite:///{db}", *flags, *FAST_FLAGS, code=2)
    )
    assert "'labels' in" in line and expected in line
    assert not db.exists() or Store(f"sqlite:///{db}").count() == 0


def _one_op_model(path: Path, op: str, domain: str, opsets: dict[str, int]) -> Path:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize(
    ("op", "domain", "opsets", "expected"),
    [
        ("FancyOp", "evil.corp", {"": 17, "evil.corp": 1}, "op 'FancyOp' of domain 'evil.corp'"),
        ("Relu", "", {"": 99}, "imports opset 99 of domain 'ai.onnx'"),
    ],
    ids=["unknown-domain-op", "unsupported-opset"],
)
def test_models_onnx_runtime_cannot_open_stop_before_measuring(
    tmp_path: Path, cli_run: Any, op: str, domain: str, opsets: dict[str, int], expected: str
) -> None:
    """The ONNX checker passes both; they failed only in the reference worker, after every other candidate."""
    model = _one_op_model(tmp_path / "m.onnx", op, domain, opsets)
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.zeros((8, 4), np.float32))
    db = tmp_path / "store.db"
    line = _one_line(cli_run("fit", str(model), "--data", str(data), "--store", f"sqlite:///{db}", *FAST_FLAGS, code=2))
    assert expected in line and "m.onnx" in line
    assert not db.exists() or Store(f"sqlite:///{db}").count() == 0


def test_missing_data_is_reported_before_the_model_is_read(tmp_path: Path) -> None:
    """The model is a FIFO nobody writes to: reading it blocks forever, as a huge or hostile file would take
    long. The inputs that can be checked cheaply are checked first, so the run ends at once on the data."""
    model = tmp_path / "model.onnx"
    os.mkfifo(model)
    p = _chipfit("fit", model, "--data", tmp_path / "missing.npz", "--out", tmp_path / "art")
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "missing.npz' does not exist" in _one_line(p.stderr)
