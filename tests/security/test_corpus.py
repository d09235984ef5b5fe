"""The bad-input corpus: hostile and malformed inputs to `chipfit fit` (and a few to the other commands), each
answered by one clear line that names the culprit, exit 2, no traceback and no hang. In-process through Typer's
CliRunner, with a few real processes where a traceback printed by a library or a hang is what is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from chipfit.cli import app
from conftest import make_mlp, mlp_data

Case = tuple[str, Callable[[Path], list[str]], str]  # id, args from the corpus folder, what the line must name


def _corpus(root: Path) -> Path:
    """Good files to combine with bad ones, and the bad ones."""
    good = make_mlp(root / "good.onnx")
    mlp_data(root / "good.npz", model=good)
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    raw = good.read_bytes()
    (root / "empty.onnx").write_bytes(b"")
    (root / "junk.onnx").write_bytes(os.urandom(512))
    (root / "half.onnx").write_bytes(raw[: len(raw) // 2])
    (root / "text.onnx").write_text("this is not a model\n")
    (root / "folder.onnx").mkdir()
    (root / "model.txt").write_text("hello")
    (root / "junk.pt2").write_bytes(os.urandom(256))
    (root / "empty.pt2").write_bytes(b"")
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.nothing")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.nothing", 1)]
    )
    onnx.save(m, str(root / "unknown_op.onnx"))
    proto = onnx.load(str(good))
    proto.opset_import[0].version = 99
    onnx.save(proto, str(root / "opset99.onnx"))
    ext = onnx.load(str(good))
    onnx.save(ext, str(root / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    (root / "ext.data").unlink()  # the external weights it names are gone

    (root / "empty.npz").write_bytes(b"")
    np.save(root / "array.npy", x)
    (root / "array.npy").rename(root / "npy_named.npz")
    (root / "text.npz").write_text("x,y\n1,2\n")
    (root / "folder.npz").mkdir()
    np.savez(root / "wrong_name.npz", input=x)
    np.savez(root / "strings.npz", x=np.array([["a"] * 4] * 16))
    np.savez(root / "five.npz", x=np.ones((16, 5), np.float32))
    np.savez(root / "rank1.npz", x=np.ones(16, np.float32))
    np.savez(root / "zero_rows.npz", x=np.ones((0, 4), np.float32))
    nan = x.copy()
    nan[3, 1] = np.nan
    np.savez(root / "nan.npz", x=nan)
    np.savez(root / "inf.npz", x=np.full((16, 4), np.inf, np.float32))
    np.savez(root / "str_labels.npz", x=x, labels=np.array(["cat"] * 16))
    np.savez(root / "labels_2d.npz", x=x, labels=np.zeros((16, 3), np.int64))
    np.savez(root / "labels_short.npz", x=x, labels=np.zeros(5, np.int64))
    np.savez(root / "objects.npz", x=np.array([{"a": 1}] * 16, dtype=object), allow_pickle=True)
    np.savez(root / "complex.npz", x=np.ones((16, 4), np.complex64))

    specs = {
        "not_yaml.yaml": "max_p99_ms: [1, 2\n",
        "list.yaml": "- max_p99_ms: 5\n",
        "scalar.yaml": "5\n",
        "unknown_key.yaml": "max_p99_milliseconds: 5\n",
        "word.yaml": "max_p99_ms: fast\n",
        "negative.yaml": "max_p99_ms: -1\n",
        "objective.yaml": "objective: speed\n",
        "drop.yaml": "max_accuracy_drop: 7\n",
        "budget.yaml": "time_budget: forever\n",
        "mapping_value.yaml": "max_p99_ms: {a: 1}\n",
        "alias.yaml": "a: &a [1, 2]\nmax_p99_ms: *a\n",
        "binary.yaml": "max_p99_ms: !!binary aGVsbG8=\n",
        "python_tag.yaml": "max_p99_ms: !!python/object/apply:os.system ['true']\n",
    }
    for name, text in specs.items():
        (root / name).write_text(text)
    (root / "huge.yaml").write_text("# padding\n" * 200_000)
    (root / "folder.yaml").mkdir()
    return root


def _fit(model: str = "good.onnx", data: str = "good.npz", *flags: str) -> Callable[[Path], list[str]]:
    return lambda r: ["fit", str(r / model), "--data", str(r / data), *[f.format(r=r) for f in flags]]


MODELS: list[Case] = [
    (f"model-{name}", _fit(name), name)
    for name in (
        "missing.onnx",
        "empty.onnx",
        "junk.onnx",
        "half.onnx",
        "text.onnx",
        "folder.onnx",
        "model.txt",
        "junk.pt2",
        "empty.pt2",
        "missing.pt2",
        "unknown_op.onnx",
        "opset99.onnx",
        "ext.onnx",
    )
]
DATA: list[Case] = [
    (f"data-{name}", _fit("good.onnx", name), name)
    for name in (
        "missing.npz",
        "empty.npz",
        "npy_named.npz",
        "text.npz",
        "folder.npz",
        "wrong_name.npz",
        "strings.npz",
        "five.npz",
        "rank1.npz",
        "zero_rows.npz",
        "nan.npz",
        "inf.npz",
        "str_labels.npz",
        "labels_2d.npz",
        "labels_short.npz",
        "objects.npz",
        "complex.npz",
    )
]
SPECS: list[Case] = [
    (f"spec-{name}", _fit("good.onnx", "good.npz", "--spec", "{r}/" + name), name)
    for name in (
        "missing.yaml",
        "not_yaml.yaml",
        "list.yaml",
        "scalar.yaml",
        "unknown_key.yaml",
        "word.yaml",
        "negative.yaml",
        "objective.yaml",
        "drop.yaml",
        "budget.yaml",
        "mapping_value.yaml",
        "alias.yaml",
        "binary.yaml",
        "python_tag.yaml",
        "huge.yaml",
        "folder.yaml",
    )
]
FLAGS: list[Case] = [
    (f"flag{flag}={value}", _fit("good.onnx", "good.npz", flag, value), Path(value).name if "/" in value else flag)
    for flag, value in (
        ("--max-p99-ms", "-3"),
        ("--max-p99-ms", "0"),
        ("--max-p99-ms", "nan"),
        ("--max-p99-ms", "inf"),
        ("--max-p99-ms", "abc"),
        ("--max-accuracy-drop", "2"),
        ("--max-accuracy-drop", "-0.1"),
        ("--max-memory-mb", "-5"),
        ("--min-fidelity", "1.5"),
        ("--fidelity-metric", "vibes"),
        ("--batch-sizes", "0"),
        ("--batch-sizes", "a,b"),
        ("--batch-sizes", "-1"),
        ("--threads", "0"),
        ("--threads", "many"),
        ("--backends", "nosuch"),
        ("--backends", "os:system"),
        ("--backends", "chipfit.cli:app"),
        ("--objective", "speed"),
        ("--opt-levels", "turbo"),
        ("--execution-modes", "sideways"),
        ("--passes", "int4_magic"),
        ("--measure-time", "-1"),
        ("--tune-time", "soon"),
        ("--time-budget", "forever"),
        ("--store", "nosuch://db"),
        ("--calib-data", "{r}/missing_calib.npz"),
        ("--out", "{r}/good.npz"),
    )
]
OTHER: list[Case] = [
    ("serve-missing", lambda r: ["serve", str(r / "no_artifact")], "no_artifact"),
    ("serve-a-file", lambda r: ["serve", str(r / "good.npz")], "good.npz"),
    (
        "compile-missing",
        lambda r: ["compile", str(r / "missing.onnx"), "--target", "raspberry-pi-5", "--out", str(r / "c")],
        "missing.onnx",
    ),
    (
        "compile-target",
        lambda r: ["compile", str(r / "good.onnx"), "--target", "toaster", "--out", str(r / "c")],
        "toaster",
    ),
    ("recommend-missing", lambda r: ["recommend", str(r / "missing.onnx"), "--data", str(r / "good.npz")], "missing"),
    ("explore-missing", lambda r: ["explore", str(r / "missing_space.yaml"), "--budget", "1usd"], "missing_space"),
    ("explore-budget", lambda r: ["explore", str(r / "list.yaml"), "--budget", "lots"], "budget"),
    ("fit-no-data", lambda r: ["fit", str(r / "good.onnx")], "--data"),
    ("fit-unknown-flag", lambda r: ["fit", str(r / "good.onnx"), "--data", str(r / "good.npz"), "--turbo"], "--turbo"),
    ("no-such-command", lambda r: ["frobnicate"], "frobnicate"),
]
CASES = MODELS + DATA + SPECS + FLAGS + OTHER


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 70 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("name", "args", "culprit"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(
    name: str, args: Callable[[Path], list[str]], culprit: str, corpus: Path, tmp_path: Path
) -> None:
    argv = args(corpus)
    if argv[0] in ("fit", "recommend") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] == "fit" and "--store" not in argv:
        argv += ["--store", f"sqlite:///{tmp_path / 'results.db'}"]
    result = CliRunner().invoke(app, argv)
    text = result.stdout + result.stderr
    assert result.exit_code == 2, (result.exit_code, text[-2000:], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (text[-2000:], result.exception)
    assert "Traceback" not in text, text[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert culprit.lower() in lines[0].lower(), f"the error does not name {culprit!r}: {lines[0]}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


PROCESS_CASES = [
    ("alias-bomb", "bomb.yaml"),  # a YAML alias bomb under a scalar key: refused, not expanded
    ("garbage-pt2", "junk.pt2"),  # torch's own traceback must not reach the terminal
    ("npy-named-npz", "npy_named.npz"),
]


@pytest.mark.parametrize(("name", "culprit"), PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_in_a_real_process_no_traceback_and_no_hang(name: str, culprit: str, corpus: Path, tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(9))}]" for i in range(1, 9)]
    (corpus / "bomb.yaml").write_text("\n".join(levels) + "\nobjective: *a8\n")
    model, data, spec = "good.onnx", "good.npz", []
    if culprit.endswith(".pt2"):
        model = culprit
    elif culprit.endswith(".npz"):
        data = culprit
    else:
        spec = ["--spec", str(corpus / culprit)]
    argv = [sys.executable, "-m", "chipfit.cli", "fit", str(corpus / model), "--data", str(corpus / data), *spec]
    argv += ["--out", str(tmp_path / "out"), "--store", f"sqlite:///{tmp_path / 'r.db'}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=10)  # a hang fails the test
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(re.escape(culprit), lines[0]), p.stderr[-2000:]
