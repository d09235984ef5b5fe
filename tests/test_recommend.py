"""`chipfit recommend` is credible: the spec it reports is the one given (``--min-throughput`` included), a target
no faster than this machine is never predicted faster than what was measured here (on a fixed catalogue
target and a synthetic store whose learned correction would predict every target absurdly fast, so no verdict
depends on this machine's speed), every error bar says what it rests on, the HTML's header is computed from
its rows, and each long phase logs a line when stderr is not a terminal."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import chipfit
from chipfit.candidate import Candidate
from chipfit.hardware.catalog import Target, load_catalog
from chipfit.measure.measurement import Measurement
from chipfit.predict import model_info, roofline_ms
from chipfit.recommend import clamp, dominated, quota_reference
from chipfit.search.space import SpaceOptions
from chipfit.store import Store
from chipfit.testing import corpus

MATCH = "aws-c7i.xlarge"  # this machine, fixed: 2 of the 4 vCPUs of a c7i.xlarge, measured below its peaks


def _local() -> Target:
    m = load_catalog()[MATCH]
    return replace(
        m, name="local", title="this machine: test CPU, 2 cores in the CPU quota", cores=2, threads=2,
        peak_gflops={"fp32": 38.0, "fp16": 76.0, "int8": 1200.0}, mem_bw_gbs=11.5, origin="local",
    )  # fmt: skip


@pytest.fixture
def fixed_machine(monkeypatch: pytest.MonkeyPatch) -> Target:
    """``local_target`` returns the fixed target above (matched to MATCH), whatever machine runs the test."""
    import chipfit.hardware.local as local_mod

    target = _local()
    info = {"how": f"test CPU resembles {MATCH}", "exact": False, "match": MATCH, "rates": {}}
    monkeypatch.setattr(local_mod, "local_target", lambda measure=True: (target, info))
    return target


def test_a_target_no_faster_than_this_machine_is_dominated_per_dtype_and_bandwidth() -> None:
    cat = load_catalog()
    ref = quota_reference(_local(), cat[MATCH])
    assert ref["scale"] == 0.5 and ref["peak_gflops"]["fp32"] == pytest.approx(205.0)  # the entry at 2 of 4 vCPUs
    assert ref["peak_gflops"]["int8"] == pytest.approx(13107 / 2) and ref["mem_bw_gbs"] == pytest.approx(17.5)
    pi5 = cat["raspberry-pi-5"]  # 154 fp32, 17 GB/s: below on every dtype and bandwidth, though above measured fp32
    assert pi5.peak("fp32") > _local().peak("fp32") and dominated(pi5, ref)
    assert not dominated(cat[MATCH], ref)  # all 4 vCPUs: twice the quota
    assert not dominated(cat["aws-g4dn.xlarge"], ref)  # a GPU
    assert not dominated(replace(pi5, mem_bw_gbs=18.0), ref)  # more bandwidth than here
    assert not dominated(replace(pi5, peak_gflops={"fp32": 154.0, "int8": 7000.0}), ref)  # one dtype faster
    assert dominated(replace(pi5, peak_gflops={"fp32": 154.0}), ref)  # a missing dtype runs at fp32
    no_match = quota_reference(_local(), None)  # without a catalogue match: the measured rates
    assert no_match["peak_gflops"]["fp32"] == 38.0 and dominated(
        replace(pi5, peak_gflops={"fp32": 30}, mem_bw_gbs=5), no_match
    )


def test_clamp_raises_a_prediction_to_the_measurement_at_the_same_variant_and_batch() -> None:
    floor = {("original", 32): (0.0996, 0.12), ("*", 32): (0.05, 0.07), ("*", 1): (0.01, 0.02)}
    cand = {"passes": [], "batch": 32}
    p50, p99, note = clamp(0.095, 0.11, cand, floor)  # the Raspberry Pi 5: 0.095 ms vs 0.0996 ms here
    assert (p50, p99) == (0.0996, 0.12) and "0.095 ms < 0.0996 ms measured here at batch 32" in note
    assert clamp(0.2, 0.3, cand, floor) == (0.2, 0.3, "")  # slower than here: unchanged
    assert clamp(0.001, 0.002, {"passes": [{"name": "int8_dynamic"}], "batch": 1}, floor)[:2] == (0.01, 0.02)
    assert clamp(0.001, 0.002, {"passes": [], "batch": 8}, floor) == (0.001, 0.002, "")  # nothing measured at 8


@pytest.fixture
def fast_store(tmp_path: Path, fixed_machine: Target) -> Store:
    """Three corpus graphs measured (synthetically) on the fixed machine at 1/1000 of their roofline: the
    correction learned from it predicts every target ~1000× faster than its roofline, far below anything a
    real measurement of the test model here can reach."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    for model, _ in corpus.write(tmp_path / "corpus", n=3, samples=4):
        m = chipfit.load_model(model)
        info = model_info(m.stats)
        store.put_model(m.sha256, info)
        for level, threads, batch in itertools.product(("disable", "all"), (1, 2), (1, 4, 16)):
            cand = Candidate(
                "onnxruntime", options={"graph_optimization_level": level, "intra_op_num_threads": threads}, batch=batch
            )
            p50 = roofline_ms(info, fixed_machine, batch, "fp32", threads) / 1000
            store.put(m.sha256, cand, "ctx", {}, "env", Measurement("ok", {"p50_ms": p50, "p99_ms": 1.2 * p50}))
    return store


TARGETS = "raspberry-pi-5,aws-g4dn.xlarge,aws-c7g.xlarge"


def _recommend(mlp: Path, mlp_npz: Path, store: Store, out: Path, *extra: str) -> tuple[Any, str]:
    from chipfit.cli import app

    args = ["recommend", str(mlp), "--data", str(mlp_npz), "--backends", "onnxruntime", "--time-budget", "3s"]
    args += ["--store", store.url, "--targets", TARGETS, "--out", str(out), "--json", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    return json.loads(result.stdout), result.stderr


def test_recommend_never_predicts_a_slower_target_faster_than_measured_here(
    mlp: Path, mlp_npz: Path, fast_store: Store, tmp_path: Path
) -> None:
    rec = chipfit_recommend(mlp, mlp_npz, fast_store, tmp_path)
    rows = {t["name"]: t for t in rec.targets}
    measured = [r for r in rec.fit.candidates if r.measurement.ok]
    pi5 = rows["raspberry-pi-5"]
    here = min(r.metric("p50_ms") for r in measured if r.candidate.batch == pi5["batch"])
    pred = roofline_ms(model_info(rec.fit.model.stats), load_catalog()["raspberry-pi-5"], pi5["batch"])
    assert pred / 100 < here  # what the learned correction (~1/1000) predicts is far below the measurement
    assert pi5["p50_ms"] >= here and pi5["clamped"] and "measured here" in pi5["clamped"]
    assert pi5["p99_ms"] >= pi5["p50_ms"] and "clamped" in pi5["basis"]
    assert pi5["throughput"] == pytest.approx(pi5["batch"] / pi5["p50_ms"] * 1e3)  # cost follows the clamped p50
    gpu = rows["aws-g4dn.xlarge"]  # faster than this machine: its prediction stands
    assert not gpu["clamped"] and gpu["p50_ms"] < here
    for r in rec.targets:
        if r["source"] == "predicted":
            assert r["error_basis"].startswith("±") and "held-out models of this store" in r["error_basis"]
    assert (
        "at most k times this machine's peak compute (every dtype) and memory bandwidth (aws-c7i.xlarge at 2 cores"
        in rec.basis["clamp"]
    )


def chipfit_recommend(mlp: Path, mlp_npz: Path, store: Store, tmp_path: Path) -> Any:
    from chipfit.recommend import recommend

    space = SpaceOptions(backends=("onnxruntime",))
    kw = {"space": space, "store": store, "time_budget": "3s", "home": tmp_path / "h"}
    return recommend(mlp, mlp_npz, targets=tuple(TARGETS.split(",")), min_throughput=500.0, fit_kwargs=kw)


def test_recommend_reports_its_spec_header_and_phases(
    mlp: Path, mlp_npz: Path, fast_store: Store, tmp_path: Path
) -> None:
    out, stderr = _recommend(mlp, mlp_npz, fast_store, tmp_path / "r", "--min-throughput", "500")
    assert out["spec"]["min_throughput"] == 500
    names = [t["name"] for t in out["targets"]]
    page = (tmp_path / "r" / "recommend.html").read_text()
    row = names.index("local") + 1
    assert f"Row {row} (<b>local</b>" in page and "first measured row" not in page
    assert re.search(r"<td>min_throughput</td><td>throughput ≥</td><td>500</td>", page)  # a table, not JSON
    assert "{&quot;" not in page and "held-out models of this store" in page
    assert page.count("not validated on the other targets") == 1  # said once, above the table
    body = page[page.index('<table class="targets"') :]
    tags = re.findall(r"</td><td>([^<]*)(?: <span|</td></tr>)", body)
    assert tags and all(len(t) < 60 for t in tags)  # the rows carry a short tag
    assert json.loads((tmp_path / "r" / "recommend.json").read_text())["spec"]["min_throughput"] == 500
    lines = stderr.splitlines()  # CliRunner's stderr is not a terminal: one line per phase and per target
    for phase in ("profiling", "training the predictor", "evaluating the predictor", "held-out fold", "writing"):
        assert any(phase in line for line in lines), (phase, stderr)
    for i, name in enumerate(TARGETS.split(","), 1):
        assert any(f"predicting {name} ({i}/3)" in line for line in lines), stderr


def test_predict_eval_logs_each_fold(fast_store: Store) -> None:
    from chipfit.cli import app

    result = CliRunner().invoke(app, ["predict-eval", "--store", fast_store.url, "--folds", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["folds"] == 3
    for phase in ("reading the store", "evaluating the predictor", "fold (1/3)", "fold (2/3)", "fold (3/3)"):
        assert phase in result.stderr, result.stderr
    quiet = CliRunner().invoke(app, ["predict-eval", "--store", fast_store.url, "--json", "-q"])
    assert quiet.exit_code == 0 and "fold" not in quiet.stderr


def test_plot_labels_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chipfit.report.recommend import place_labels

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    points = [(0.1 * (1 + 0.01 * i), 0.5 * (1 + 0.02 * (i % 3)), f"aws-target-{i}") for i in range(8)]
    points += [(10.0, 3.0, "far-away")]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    bars = [(x / 2, x * 2, y) for x, y, _ in points]  # error bars: labels keep clear of them too
    anns = place_labels(ax, points, bars=bars)
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in anns]  # the labels' text
    assert len(boxes) == len(points)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    for x0, x1, y in bars:
        (px0, py), (px1, _) = ax.transData.transform([(x0, y), (x1, y)])
        for box in boxes:
            assert not (box.x0 < px1 and px0 < box.x1 and box.y0 < py < box.y1), (box, x0, x1, y)
    plt.close(fig)


def _target_row(i: int, **kw: Any) -> dict[str, Any]:
    row = {
        "name": f"aws-target-number-{i}.xlarge", "backend": "onnxruntime", "variant": "int8_static+ort_graph_opt",
        "batch": 32, "p50_ms": 0.0123456 * i, "p99_ms": 0.0234567 * i, "throughput": 75500.0 / i,
        "instances": i, "usd_per_1m": 3.1e-7 * i, "energy_mj": 0.456 * i, "meets": i % 2 == 0,
        "violations": [] if i % 2 == 0 else ["max_p99_ms", "max_cost_per_1m"], "source": "predicted",
        "expected_error": 0.12, "clamped": "",
    }  # fmt: skip
    return row | kw


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_recommend_table_keeps_every_number_whole_at_any_width(width: int) -> None:
    from rich.console import Console

    from chipfit.cli.recommend_table import recommend_table

    rows = [_target_row(i) for i in range(1, 6)]
    rows[2] |= {"source": "measured", "expected_error": 0.0}
    rows[3] |= {"clamped": "clamped: predicted ... raised to the measurement", "expected_error": float("inf")}
    table, hidden = recommend_table(rows, "cost", width)
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    keys = {"p50 ms": "p50_ms", "p99 ms": "p99_ms", "$/1M": "usd_per_1m", "mJ": "energy_mj", "thr/s": "throughput"}
    shown = [k for k in keys if k not in hidden]
    assert "p99 ms" in shown and "$/1M" in shown  # the bound and the objective are never left out
    assert (width >= 200) == (not hidden)
    from chipfit.cli.fit_table import fmt

    for r in rows:
        for col in shown:
            digits = 3 if col == "mJ" else 4
            assert re.search(rf"(^|\s){re.escape(fmt(float(r[keys[col]]), digits))}(\s|$)", text, re.M), (col, text)
    assert "predicted ±12%" in text.replace("\n", " ") or "±12%" in text
    assert "clamped" in text and "±?" in text


def test_a_faster_target_is_never_predicted_faster_than_its_resources_allow() -> None:
    """A target with at most k times this machine's compute and bandwidth: at most k times faster than measured."""
    from chipfit.hardware.catalog import load_catalog
    from chipfit.recommend import advantage, clamp

    pi5 = load_catalog()["raspberry-pi-5"]
    ref = {"name": "here", "peak_gflops": {"fp32": 100.0, "int8": 400.0}, "mem_bw_gbs": 10.0}
    double = replace(pi5, peak_gflops={"fp32": 200.0, "int8": 800.0}, mem_bw_gbs=20.0)
    assert advantage(double, ref) == pytest.approx(2.0)
    assert advantage(replace(pi5, peak_gflops={"fp32": 50.0}, mem_bw_gbs=5.0), ref) <= 1.0
    floor = {("original", 32): (0.1476, 0.1992), ("*", 32): (0.1476, 0.1992)}
    cand = {"passes": [], "batch": 32}
    p50, p99, note = clamp(0.0139, 0.039, cand, floor, advantage=2.0)  # the run's 10x-faster prediction
    assert p50 == pytest.approx(0.0738) and p99 >= p50 and "/ 2" in note
    assert clamp(0.09, 0.12, cand, floor, advantage=2.0) == (0.09, 0.12, "")  # within 2x: left as predicted


def test_recommendation_json_has_null_for_an_unknown_error() -> None:
    """An unvalidated predictor's expected error is infinite in Python; `--json` (and the team service's API,
    which browsers parse) must stay standard JSON: null, not Infinity."""
    import json

    from chipfit.recommend import Recommendation

    rows = [{"target": "x", "expected_error": float("inf"), "p50_ms": 1.0}, {"target": "y", "p50_ms": float("nan")}]
    rec = Recommendation(targets=rows, objective="latency", spec={}, fit=None, farm={"t": {"median_ape": math.nan}})
    data = json.loads(json.dumps(rec.to_dict(), allow_nan=False))
    assert data["targets"][0]["expected_error"] is None and data["targets"][1]["p50_ms"] is None
    assert data["farm"]["t"]["median_ape"] is None
    assert rows[0]["expected_error"] == float("inf")  # the in-memory rows are unchanged
