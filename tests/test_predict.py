"""The predictor for what it claims, on a store whose truth is known (real graphs of the corpus, latencies that
follow a learnable correction of the roofline on a catalogue target, so no verdict depends on this machine's
speed): roofline arithmetic, grouped k-fold that never scores a model it trained on, a learned correction
that beats the roofline on unseen models, predict-eval's JSON, the guided search, and `chipfit recommend`
never presenting a prediction as a measurement."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chipfit
from chipfit.candidate import Candidate
from chipfit.hardware.catalog import load_catalog
from chipfit.measure.measurement import Measurement
from chipfit.predict import Predictor, model_folds, model_info, predict_eval, roofline_ms, training_rows
from chipfit.search.space import SpaceOptions
from chipfit.store import Store
from chipfit.testing import corpus


def test_roofline_is_compute_or_memory_bound_and_reads_weights_once() -> None:
    t = replace(load_catalog()["aws-c6a.xlarge"], peak_gflops={"fp32": 100.0, "int8": 400.0}, mem_bw_gbs=10.0)
    compute = {"nodes": [["MatMul", 10**9, 10**3, 0]]}  # 1 GFLOP, 1 kB
    memory = {"nodes": [["Add", 10**3, 10**8, 0]]}  # 100 MB: beyond caches, DRAM-bound
    weights = {"nodes": [["MatMul", 10**3, 10**8, 10**8 - 10]]}  # weights dominate
    assert roofline_ms(compute, t, 1) == pytest.approx(10.0, rel=1e-3)  # 1 GFLOP at 100 GFLOP/s
    assert roofline_ms(compute, t, 1, "int8") == pytest.approx(2.5, rel=1e-3)
    assert roofline_ms(memory, t, 1) == pytest.approx(10.0, rel=1e-3)  # 100 MB at 10 GB/s
    assert roofline_ms(memory, t, 4) == pytest.approx(40.0, rel=1e-3)  # activations scale with the batch
    assert roofline_ms(weights, t, 4) == pytest.approx(roofline_ms(weights, t, 1), rel=1e-3)  # weights read once
    assert roofline_ms(compute, t, 1, threads=1) == pytest.approx(40.0, rel=1e-3)  # 1 of 4 vCPUs
    cached = {"nodes": [["Add", 10**3, 10**5, 0]]}  # 100 kB stays in cache: 4× the DRAM rate
    assert roofline_ms(cached, t, 1) == pytest.approx(10**5 / 40e9 * 1e3 + 1e-3, rel=1e-3)


TARGET = "aws-c6a.xlarge"  # a catalogue entry: the synthetic truth below does not depend on this machine
OPT_COST = {"disable": 1.4, "all": 0.3}  # the learnable truth: log(p50 / roofline) per optimisation level


def _truth_ms(info: dict[str, Any], cand: Candidate, t: Any) -> float:
    """A latency the roofline gets wrong in a systematic, learnable way (optimisation level, batch, threads)."""
    threads = cand.options["intra_op_num_threads"]
    roof = roofline_ms(info, t, cand.batch, "fp32", threads)
    log_corr = OPT_COST[cand.options["graph_optimization_level"]] + 0.25 * math.log2(cand.batch) + 0.2 * threads
    return roof * math.exp(log_corr)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Eight real graphs of the corpus (their node FLOPs and bytes from shape inference), each with 18 candidate
    measurements whose p50 follows ``_truth_ms`` up to ±3% noise: a store where the right answer is known."""
    folder = tmp_path_factory.mktemp("corpus")
    store = Store(f"sqlite:///{folder / 'store.db'}")
    t = load_catalog()[TARGET]
    rng = np.random.default_rng(0)
    for model, _ in corpus.write(folder, n=8, samples=4):
        m = chipfit.load_model(model)
        info = model_info(m.stats)
        store.put_model(m.sha256, info)
        for level, threads, batch in itertools.product(OPT_COST, (1, 2, 4), (1, 4, 16)):
            opts = {"graph_optimization_level": level, "intra_op_num_threads": threads}
            cand = Candidate("onnxruntime", options=opts, batch=batch)
            p50 = _truth_ms(info, cand, t) * float(np.exp(rng.uniform(-0.03, 0.03)))
            store.put(m.sha256, cand, "ctx", {}, "env", Measurement("ok", {"p50_ms": p50, "p99_ms": 1.2 * p50}))
    return store


def _rows(store: Store) -> list[dict[str, Any]]:
    return training_rows(store, load_catalog()[TARGET])


def test_group_k_fold_never_puts_a_model_in_both_training_and_test(synthetic_store: Store) -> None:
    rows = _rows(synthetic_store)
    models = [r["model_hash"] for r in rows]
    splits = model_folds(rows, folds=3)
    assert len(splits) == 3
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(len(rows)))  # every row is scored exactly once
    for train, test in splits:
        assert not {models[i] for i in train} & {models[i] for i in test}
        assert len(train) + len(test) == len(rows)
    assert len(model_folds(rows, folds=50)) == 8  # capped at the number of models


def test_the_learned_correction_beats_the_roofline_on_models_it_never_saw(synthetic_store: Store) -> None:
    rows = _rows(synthetic_store)
    assert len(rows) == 8 * 18 and len({r["model_hash"] for r in rows}) == 8
    report = predict_eval(rows, folds=4)
    assert report["n"] == len(rows) and report["models"] == 8 and report["folds"] == 4 and "mape" not in report
    actual = np.array([r["metrics"]["p50_ms"] for r in rows])
    untrained = Predictor()  # the roofline times a constant: what the search has before any measurement
    baseline = np.array([untrained.predict(r["info"], r["candidate"], r["target"]).p50_ms for r in rows])

    def median_ape(pred: np.ndarray) -> float:
        return float(np.median(np.abs(pred - actual) / actual))

    # the truth's correction spans e^0.5 .. e^3.4 of the roofline: neither it nor a constant factor comes close
    assert median_ape(baseline / 3.0) > 0.7 and median_ape(baseline) > 0.5
    assert report["median_ape"] < 0.25 < median_ape(baseline) / 2  # learned on other models' measurements
    assert report["within_10pct"] > 0.3 and report["spearman"] > 0.95  # and ranks an unseen model's candidates
    for m in report["per_model"].values():
        assert m["n"] == 18 and m["median_ape"] < 0.5


def test_median_ape_is_the_median_and_spearman_averages_ties() -> None:
    t = load_catalog()[TARGET]
    node = ["MatMul", 10**6, 10**5, 0]
    info = {"flops": 10**6, "bytes": 10**5, "params": 0, "param_bytes": 0, "n_nodes": 1, "nodes": [node]}
    rows = []
    for g in ("a", "b"):
        for batch in (1, 1, 2, 2, 4):  # tied truths and tied predictions
            cand = Candidate("onnxruntime", options={"intra_op_num_threads": 1}, batch=batch).to_dict()
            rows.append({"model_hash": g, "info": info, "candidate": cand, "target": t, "metrics": {"p50_ms": 1.0}})
            rows[-1]["metrics"] = {"p50_ms": float(batch) * (1.5 if g == "b" else 1.0)}
    report = predict_eval(rows, folds=2)  # under 20 rows per fold: the roofline × 3, the same for both models
    pred = np.array([Predictor().predict(r["info"], r["candidate"], t).p50_ms for r in rows])
    actual = np.array([r["metrics"]["p50_ms"] for r in rows])
    assert report["median_ape"] == pytest.approx(float(np.median(np.abs(pred - actual) / actual)))
    from scipy.stats import spearmanr

    assert report["spearman"] == pytest.approx(spearmanr(pred, actual).statistic)
    assert report["spearman"] < 1.0  # model b's rows rank above a's predicted equals: ties are not broken by order


def test_predict_eval_json(synthetic_store: Store, cli_run) -> None:  # type: ignore[no-untyped-def]
    out = json.loads(cli_run("predict-eval", "--store", synthetic_store.url, "--json", "--folds", "2"))
    assert {"n", "within_10pct", "median_ape", "spearman"} <= set(out) and "mape" not in out
    assert out["n"] == 8 * 18 and out["folds"] == 2
    empty = json.loads(
        cli_run("predict-eval", "--store", "sqlite:///" + str(Path(synthetic_store.url[10:]).parent / "e.db"), "--json")
    )
    assert empty["n"] == 0 and "at least two models" in empty["note"]


def test_recommend_measures_here_and_labels_predictions(mlp: Path, mlp_npz: Path, tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    args = ["recommend", str(mlp), "--data", str(mlp_npz), "--backends", "onnxruntime", "--time-budget", "2s"]
    targets = "aws-c7g.xlarge,aws-g4dn.xlarge,raspberry-pi-5"
    out = json.loads(
        cli_run(*args, "--targets", targets, "--min-throughput", "100", "--out", str(tmp_path / "r"), "--json", "-q")
    )
    rows = out["targets"]
    assert {r["name"] for r in rows} == {"local", *targets.split(",")}
    for r in rows:
        assert {"name", "backend", "p50_ms", "p99_ms", "usd_per_1m", "energy_mj", "meets", "source"} <= set(r)
        assert r["source"] == ("measured" if r["name"] == "local" else "predicted")
        assert r["p50_ms"] > 0 and r["usd_per_1m"] > 0 and r["instances"] >= 1
    assert "<svg" in (tmp_path / "r" / "recommend.html").read_text()
    assert json.loads((tmp_path / "r" / "recommend.json").read_text())["targets"]
    none = cli_run(*args, "--targets", "raspberry-pi-5", "--max-p99-ms", "0.000001", "-q", code=1)
    assert "raspberry-pi-5" in none and "max_p99_ms" in none
    assert "unknown target(s) ['nope']" in cli_run(*args, "--targets", "nope", code=2)
    assert "--objective must be one of" in cli_run(*args, "--objective", "speed", code=2)


def test_guided_search_orders_by_prediction_and_skips_wide_misses(synthetic_store: Store, tmp_path: Path) -> None:
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.guide import make_guide
    from chipfit.search.space import build_space
    from conftest import FAST_TIMING

    model, data = corpus.write(tmp_path, n=8, samples=32)[3]  # in the store already: calibrated
    m = chipfit.load_model(model)
    guide = make_guide(model_info(m.stats), synthetic_store)
    assert guide is not None and guide.trained
    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1, 16),
        threads=(1, 2),
        opt_levels=("none", "all"),
        execution_modes=("sequential",),
        passes=(),
    )
    cands = build_space(m, space, 2)
    ordered = guide.order(cands)
    assert sorted(c.id for c in ordered) == sorted(c.id for c in cands) and ordered[0].reference
    stage = [c for c in ordered if not c.reference and c.batch == 1 and not c.option_sweep]
    assert [guide.predict(c).p50_ms for c in stage] == sorted(guide.predict(c).p50_ms for c in stage)
    fastest = min(guide.predict(c).p50_ms for c in cands)
    settings = MeasureSettings(timing=FAST_TIMING, timeout_s=60, probe=False)
    result = chipfit.fit(
        model,
        data,
        space=space,
        settings=settings,
        store=synthetic_store,
        home=tmp_path / "h",
        max_p99_ms=fastest / 100,
    )
    skipped = [r for r in result.candidates if "predicted" in (r.measurement.error or "")]
    assert skipped and all("× the bound" in r.measurement.error for r in skipped)
    assert result.reference is not None and result.reference.measurement.ok  # the reference is always measured
