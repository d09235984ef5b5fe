"""chipfit cascade: the threshold is picked on one split of the labelled data and everything reported is
measured on the other; the latency per query is a batch-1 latency (never a batch-k p50 divided by k); an
interrupted write keeps the cascade that was there. Two small linear classifiers built with onnx.helper,
fitted for real with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import chipfit
from chipfit.errors import DataError
from chipfit.package import load
from chipfit.search.driver import MeasureSettings
from chipfit.search.space import SpaceOptions
from chipfit.serve.cascade import batch1_latency, build_cascade, split_rows
from conftest import FAST_TIMING

N_IN, N_OUT, ROWS = 6, 4, 400


def _linear(path: Path, w: np.ndarray) -> Path:
    """logits[batch, N_OUT] = x[batch, N_IN] @ w."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_OUT])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The accurate model is the truth (labels are its argmax); the fast one is the truth plus noise."""
    work = tmp_path_factory.mktemp("cascade")
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal((N_IN, N_OUT))
    w_fast = w_true + 0.9 * rng.standard_normal((N_IN, N_OUT))
    x = rng.standard_normal((ROWS, N_IN)).astype(np.float32)
    labels = (x @ w_true).argmax(1).astype(np.int64)
    np.savez(work / "eval.npz", x=x, labels=labels)
    space = SpaceOptions(backends=("onnxruntime",), batch_sizes=(1, 8), threads=(1,), opt_levels=("all",), passes=())
    arts = {}
    for name, w in (("fast", w_fast), ("accurate", 3 * w_true)):
        chipfit.fit(
            _linear(work / f"{name}.onnx", w),
            {"x": x[:64]},
            out=work / name,
            space=space,
            settings=MeasureSettings(timing=FAST_TIMING, predict=False),
            store=f"sqlite:///{work / 'store.db'}",
            home=work / "home",
        )
        arts[name] = work / name
    return {**arts, "work": work, "x": x, "labels": labels}


def _right_and_conf(art: Path, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = load(art)
    try:
        logits = m.run({"x": x})[0].astype(np.float64)
    finally:
        m.close()
    p = np.exp(logits - logits.max(1, keepdims=True))
    return logits.argmax(1) == labels, (p / p.sum(1, keepdims=True)).max(1)


def test_threshold_is_picked_on_one_split_and_its_accuracy_reported_on_the_other(pair: dict[str, Any]) -> None:
    drop = 0.03
    r = build_cascade(pair["fast"], pair["accurate"], pair["work"] / "eval.npz", drop, None)
    pick, held = split_rows(ROWS)
    assert r.rows_picked == len(pick) and r.rows_held_out == len(held) and len(held) >= ROWS // 2 - 1
    assert not set(pick.tolist()) & set(held.tolist()) and len(pick) + len(held) == ROWS
    assert "held-out" in r.evaluated_on and "held-out" in r.summary()
    right_f, conf = _right_and_conf(pair["fast"], pair["x"], pair["labels"])
    right_a, _ = _right_and_conf(pair["accurate"], pair["x"], pair["labels"])
    assert right_a.all() and 0.5 < right_f.mean() < 0.95  # the fixture: a real trade-off to make

    # the threshold is the cheapest one within the bound *on the pick split* (brute force here)
    def cost(t: float, rows: np.ndarray) -> tuple[float, float]:
        keep = conf[rows] >= t
        return r.fast_ms + (1 - keep.mean()) * r.accurate_ms, float(np.where(keep, right_f[rows], True).mean())

    ok = [t for t in [*np.unique(conf[pick]), np.inf] if cost(t, pick)[1] >= 1 - drop - 1e-12]
    assert r.threshold == pytest.approx(min(ok, key=lambda t: (cost(t, pick)[0], -t)))
    # ...and what is reported is measured on the held-out rows only
    keep = conf[held] >= r.threshold
    assert r.fast_share == pytest.approx(keep.mean())
    assert r.accuracy == pytest.approx(np.where(keep, right_f[held], True).mean())
    assert r.accuracy_fast == pytest.approx(right_f[held].mean())
    assert r.expected_ms == pytest.approx(r.fast_ms + (1 - keep.mean()) * r.accurate_ms)
    assert r.within_bound == (r.accuracy >= 1 - drop - 1e-12)
    on_pick = np.where(conf[pick] >= r.threshold, right_f[pick], True).mean(), (conf[pick] >= r.threshold).mean()
    assert (r.accuracy, r.fast_share) != pytest.approx(on_pick)  # the splits differ: reporting on the pick fails


def test_too_few_rows_to_hold_any_out_is_a_data_error(pair: dict[str, Any]) -> None:
    small = pair["work"] / "small.npz"
    np.savez(small, x=pair["x"][:15], labels=pair["labels"][:15])
    with pytest.raises(DataError, match="at least 20"):
        build_cascade(pair["fast"], pair["accurate"], small, 0.01, None)


def test_latency_per_query_is_a_batch_1_latency_never_a_batch_p50_divided_by_the_batch(
    pair: dict[str, Any], tmp_path: Path
) -> None:
    manifest = json.loads((pair["fast"] / "manifest.json").read_text())
    b1 = next(p for p in manifest["batch_profile"] if p["batch"] == 1)
    b8 = next(p for p in manifest["batch_profile"] if p["batch"] == 8)
    assert batch1_latency(manifest) == (b1["p50_ms"], "batch-1 p50 measured")
    # the same artifact as if it had been measured at batch 8 only
    only8 = tmp_path / "only8"
    shutil.copytree(pair["fast"], only8)
    manifest["batch_profile"] = [b8]
    manifest["candidate"]["batch"] = 8
    manifest["measurements"] = {**manifest["measurements"], "p50_ms": b8["p50_ms"]}
    (only8 / "manifest.json").write_text(json.dumps(manifest))
    r = build_cascade(only8, pair["accurate"], pair["work"] / "eval.npz", 0.03, None)
    assert r.fast_ms == pytest.approx(b8["p50_ms"])  # one query waits for a whole call, not an 8th of one
    assert "batch-8" in r.latency_basis["fast"] and "batch-1 p50 measured" in r.latency_basis["accurate"]
    assert "batch-8" in r.summary()


def test_an_interrupted_write_keeps_the_cascade_that_was_there(
    pair: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = pair["work"] / "casc"
    build_cascade(pair["fast"], pair["accurate"], pair["work"] / "eval.npz", 0.03, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert json.loads((out / "manifest.json").read_text())["kind"] == "cascade"
    copytree = shutil.copytree
    calls: list[Path] = []

    def copy_then_fail(src: Path, dst: Path, **kw: Any) -> Any:  # the disk fills up on the second model
        calls.append(Path(dst))
        if len(calls) == 2:
            copytree(src, dst, **kw)
            raise OSError(28, "No space left on device")
        return copytree(src, dst, **kw)

    monkeypatch.setattr(shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="No space left"):
        build_cascade(pair["fast"], pair["accurate"], pair["work"] / "eval.npz", 0.2, out)
    assert len(calls) == 2 and not calls[1].exists()  # the partial copy is gone
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".casc.")]


def test_the_summary_is_finished_sentences_and_none_ends_on_a_separator(pair: dict[str, Any], cli_run: Any) -> None:
    out = pair["work"] / "casc-summary"
    printed = cli_run(
        "cascade",
        str(pair["fast"]),
        str(pair["accurate"]),
        "--data",
        str(pair["work"] / "eval.npz"),
        "--max-accuracy-drop",
        "0.03",
        "--out",
        str(out),
    )
    lines = printed.splitlines()
    assert lines[0].startswith("Threshold") and lines[-1] == f"Written to {out}."
    assert any("held-out" in line for line in lines) and any(line.startswith("Fast model's latency:") for line in lines)
    for line in lines:  # each line a finished sentence: never "...; " (the summary used to end on a separator)
        assert line == line.rstrip() and line.endswith("."), repr(line)
    # without --out, and with a basis that ends in punctuation of its own, the last line still ends cleanly
    r = build_cascade(pair["fast"], pair["accurate"], pair["work"] / "eval.npz", 0.03, None)
    r.latency_basis["accurate"] = "accurate: batch-1 p50 measured; "
    text = r.summary()
    assert text.splitlines()[-1] == "Accurate model's latency: batch-1 p50 measured."
    assert not any(line.rstrip().endswith(";") for line in text.splitlines())
