"""BENCHMARKS.md's commentary comes from the run's own numbers: the same function fed different made-up
numbers writes different prose and verdicts (no benchmark is run; standard library only)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import commentary as c


def timed(median: float, q25: float | None = None, q75: float | None = None, p50: float = 1.0) -> dict:
    return {
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "speedup_median": median,
        "speedup_q25": median - 0.05 if q25 is None else q25,
        "speedup_q75": median + 0.05 if q75 is None else q75,
    }


def text(lines: list[str]) -> str:
    return "\n".join(lines)


# -- fit on the digits CNN --------------------------------------------------------------------------------


def test_fit_commentary_follows_the_measured_speedups() -> None:
    slow32 = text(c.fit_commentary(1, "latency", {}, "onnxruntime", {1: timed(1.06), 32: timed(0.65)}))
    fast32 = text(c.fit_commentary(1, "latency", {}, "onnxruntime", {1: timed(1.3), 32: timed(1.2)}))
    assert "1.06×" in slow32 and "0.65×" in slow32 and "At batch 32" in slow32
    assert "need not be the best at batch 32" in slow32  # said only where it was slower
    assert "1.30×" in fast32 and "need not be the best" not in fast32 and "slower" not in fast32
    # an IQR spanning 1 is no difference, whatever the median
    assert "no clear difference" in text(c.fit_commentary(1, "latency", {}, "ort", {1: timed(1.02, 0.97, 1.05)}))


# -- precision ------------------------------------------------------------------------------------------------


def precision_run(model: str, passes: list[str], speedup: float, quality: float, outliers: float | None) -> dict:
    torch_p50 = 3.0
    return {
        "model": model,
        "outliers": outliers,
        "quality_name": "fidelity",
        "winner": {"label": "+".join(passes) or "default", "passes": passes, "quality": quality},
        "timing": {
            "ort": timed(1.0, 1.0, 1.0, p50=1.0),
            "winner": timed(speedup, p50=1.0 / speedup),
            "torch": timed(0.5, p50=torch_p50),
        },
        "reference_p50": 20.0,
        "candidates": [
            {"label": "s", "passes": ["int8_static"], "status": "pruned", "p50_ms": 40.0, "skip": None},
            {"label": "d", "passes": ["int8_dynamic"], "status": "ok", "p50_ms": 20.0 / speedup, "skip": None},
            {"label": "h", "passes": ["fp16"], "status": "skipped", "p50_ms": None, "skip": "no fast fp16 here"},
        ],
    }


def test_precision_goal_verdict_compares_with_the_goal() -> None:
    low = c.precision_goal(timed(1.2), 0.999)
    high = c.precision_goal(timed(2.0), 0.999)
    assert "**not reached**" in low and "1.20×" in low
    assert "**reached**" in high and "2.00×" in high
    assert "**not reached**" in c.precision_goal(timed(2.0), 0.95)  # fast but below the fidelity bound


def test_precision_reading_quotes_this_runs_gains_and_fidelities() -> None:
    def reading(gain: float, fid: float, vnni: bool) -> str:
        runs = [
            precision_run("BERT (no outliers)", ["transformer_fusion", "int8_dynamic"], gain, 0.9999, 0.0),
            precision_run("BERT (outliers)", ["transformer_fusion", "int8_dynamic"], gain, fid, 100.0),
        ]
        return text(c.precision_commentary(runs, int8_dot=vnni, isa=["avx2", "fma"]))

    a, b = reading(1.2, 0.9991, vnni=False), reading(2.0, 0.95, vnni=True)
    assert "1.20×" in a and "2.00×" not in a and "2.00×" in b
    assert "vpmaddubsw" in a and "vpmaddubsw" not in b  # the no-VNNI explanation only without VNNI
    assert "0.99910 with outliers" in a and "0.95000 with outliers" in b
    assert "fp16 was not measured: no fast fp16 here" in a
    assert "slower than the unmodified model's 20 ms" in a  # static int8 at 40 ms vs 20 ms
    for fixed in ("about 1.5×", "2–4×", "0.71", "≥ 0.999", "0.03 ms"):
        assert fixed not in a and fixed not in b
    assert "slowest runner" not in a and "on 2 of 2 models" in a


# -- backends -------------------------------------------------------------------------------------------------


def backend_rows(ov_b1: float, pct: float, tvm_b8: float) -> list[dict]:
    return [
        {"backend": "onnxruntime", "label": "default session", "p50": {1: 2.0, 8: 10.0, 32: 60.0}, "best": 32,
         "pct": pct},
        {"backend": "openvino", "label": "LATENCY", "p50": {1: ov_b1, 8: 11.0, 32: 58.0}, "best": 32,
         "pct": pct + 2},
        {"backend": "tvm", "label": "tuned", "p50": {1: 6.0, 8: tvm_b8, 32: 200.0}, "best": 8, "pct": 20.0},
    ]  # fmt: skip


def test_backends_reading_computes_ratios_ranges_and_verdicts() -> None:
    a = text(c.backends_commentary([{"title": "enc", "mflop": 212.0, "rows": backend_rows(14.0, 80.0, 30.0)}]))
    b = text(c.backends_commentary([{"title": "enc", "mflop": 212.0, "rows": backend_rows(3.0, 30.0, 9.0)}]))
    assert "openvino LATENCY 7.0×" in a and "openvino LATENCY 1.5×" in b
    assert "80–82%" in a and "30–32%" in b
    assert "the roof, not the backend, is the limit" in a and "not the backend" not in b
    assert "3.0× ONNX Runtime's p50 at batch 8" in a and "behind ONNX Runtime at every batch size" in a
    assert "0.9× ONNX Runtime's p50 at batch 8" in b and "as fast as ONNX Runtime at batch 8" in b
    for fixed in ("78–86%", "≈7×", "18–24%", "3.5×", "1.06×"):
        assert fixed not in a and fixed not in b


# -- predictor ------------------------------------------------------------------------------------------------


def test_predictor_goals_follow_the_numbers() -> None:
    a, b = c.predictor_goal(0.27, 0.964), c.predictor_goal(0.93, 0.80)
    assert "within ±10% **not reached** (27%)" in a and "Spearman **reached** (0.964)" in a
    assert "within ±10% **reached** (93%)" in b and "Spearman **not reached** (0.800)" in b
    assert "n/a" in c.predictor_goal(None, None)
    assert "met on 2 of 4 models; median share 30%" in c.guided_goal([0.1, 0.2, 0.4, 0.9])
    assert "met on 1 of 2 models; median share 50%" in c.guided_goal([0.2, 0.8])  # the median of an even count


# -- ASHA -----------------------------------------------------------------------------------------------------


def asha_runs(full: tuple[float, float], asha: tuple[float, float], tpe: tuple[float, float]) -> dict:
    """Per arm, 3 seeds of (test accuracy of the pick, best validation accuracy)."""
    run = lambda test, best, done: {"test": test, "best": best, "trials": 2 * done, "complete": done}  # noqa: E731
    return {
        "random @100%": [run(*full, 80) for _ in range(3)],
        "ASHA @10%": [run(*asha, 3) for _ in range(3)],
        "ASHA + TPE @10%": [run(*tpe, 3) for _ in range(3)],
    }


def test_asha_verdict_is_by_test_accuracy_and_names_the_best_arm() -> None:
    # ASHA's validation score is higher, but its pick's test accuracy is lower: the verdict follows the test
    lost = text(c.asha_commentary(asha_runs((0.97, 0.99), (0.96, 0.995), (0.975, 0.98)), 360))
    won = text(c.asha_commentary(asha_runs((0.95, 0.99), (0.96, 0.97), (0.955, 0.97)), 400))
    assert "**not reached**" in lost and "in 0 of 3 seeds" in lost
    assert "the best of them is **ASHA + TPE @10%** (0.9750 ≥ random @100%'s 0.9700)" in lost
    assert "**reached**" in won and "in 3 of 3 seeds" in won and "the best of them is **ASHA @10%**" in won
    assert "One test digit is 0.0028" in lost and "One test digit is 0.0025" in won
    assert "+0.0200 (random @100%)" in lost and "+0.0350 (ASHA @10%)" in lost  # validation overstates test


# -- transformer rows -----------------------------------------------------------------------------------------


def test_transformer_goals_and_the_optimum_comparison_follow_the_numbers() -> None:
    ort, opt, chip = "ORT default fp32", "Optimum avx512_vnni dynamic int8", "chipfit winner `x`"

    def timing(chip_b1: float, chip_b8: float) -> dict:
        return {
            1: {ort: timed(1.0), opt: timed(2.1), chip: timed(chip_b1)},
            8: {ort: timed(1.0), opt: timed(1.6), chip: timed(chip_b8)},
        }

    fid = {ort: 1.0, opt: 0.9935, chip: 0.995}
    won = text(c.transformer_commentary(timing(2.6, 1.6), fid, chip, opt, 80.0))
    assert "batch 1): **reached** (2.60×" in won and "Batch 8 (≥ 1.5×): **reached**" in won
    assert "Time to answer (≤ 90 s): **reached** (80 s)" in won
    assert "Batch 1: chipfit's winner is ahead of Optimum" in won and "Batch 8: chipfit's winner is level with" in won
    lost = text(c.transformer_commentary(timing(1.85, 1.2), {**fid, chip: 0.98}, chip, opt, 192.0))
    assert "batch 1): **not reached** (1.85×" in lost and "cosine 0.9800" in lost and "**not reached** (192 s)" in lost
    assert "Batch 1: chipfit's winner is behind Optimum" in lost and "ratio 0.88" in lost
    blocked = text(c.transformer_commentary(timing(2.6, 1.6), fid, chip, None, 80.0))
    assert "Optimum's row is blocked" in blocked
    assert "not measured" in text(c.transformer_commentary(timing(2.6, 1.6), fid, None, opt, 80.0))


# -- serving --------------------------------------------------------------------------------------------------


def serving_row(name: str, adaptive: float | None, one: float | None, *, slo: float = 20.0, low: float = 1.0) -> dict:
    return {
        "name": name,
        "slo": slo,
        "b1_p50": 2.0,
        "b1_p99": slo / 4,
        "batch_p50": {1: 2.0, 8: 4.0, 32: 8.0},
        "weights_mb": 84.0,
        "adaptive_wrk": {"rps": adaptive, "conns": 8} if adaptive else None,
        "one_wrk": {"rps": one, "conns": 2} if one else None,
        "adaptive_open": (adaptive or 0.0, None),
        "one_open": (one or 0.0, None),
        "overhead_ms": low - 0.1,
        "low_load_p50": low,
    }


def test_serving_goal_and_reading_follow_the_numbers() -> None:
    assert "**reached** (3.44×)" in c.serving_goal(serving_row("wide MLP", 914, 266), True)
    assert "**not reached** (1.20×)" in c.serving_goal(serving_row("wide MLP", 120, 100), True)
    assert "no connection count met the SLO for --max-batch 1" in c.serving_goal(serving_row("w", 100, None), True)
    assert "wrk missing" in c.serving_goal(serving_row("w", None, None), False)

    rows = [serving_row("wide", 900, 300), serving_row("bert", 330, 300), serving_row("cnn", None, None, slo=0.5)]
    a = text(c.serving_commentary(rows, 2))
    b = text(c.serving_commentary([serving_row("wide", 310, 300, low=1.5), serving_row("bert", 600, 200)], 16))
    assert "2 cores in the CPU quota" in a and "16 cores in the CPU quota" in b
    assert "a batch of 32 costs 4.0× one row" in a
    assert "the wide gains most from batching under wrk (3.00×)" in a and "the bert gains most" in b
    assert "cnn: 84.0 MB of weights; a batch of 8 costs 2.0× one row, a batch of 32 costs 4.0× one row, no wrk" in a
    assert "cnn's SLO (0.5 ms, 4 × its batch-1 p99) is shorter" in a and "is shorter" not in b
    assert "within it on 3 of 3 models" in a and "within it on 1 of 2 models" in b
    for fixed in ("20–34 ms", "84 MB of weights are read", "about 4× one row", "a few tenths"):
        assert fixed not in a and fixed not in b


def test_slo_held_verdict_and_explanation_follow_the_runs() -> None:
    def run(within: int, load: float, p99: float = 9.0) -> dict:
        return {"sent": 5000, "admitted": 4000, "within": within, "rejected": 1000, "client_p99": p99, "load": load}

    held = "\n".join(c.slo_held_commentary([run(3990, 1.0), run(3996, 1.2), run(3980, 0.9)], 5.0, 2))
    missed = "\n".join(c.slo_held_commentary([run(3800, 6.0, 80.0), run(3900, 5.5, 40.0)], 5.0, 2))
    quiet_miss = "\n".join(c.slo_held_commentary([run(3800, 0.5)], 5.0, 2))
    assert "**reached**: 99.8% (median of 3 runs, 99.5–99.9%)" in held and "20.0% of requests rejected" in held
    assert "load average" not in held  # nothing to explain when the goal is reached
    assert "**not reached**: 96.2% (median of 2 runs, 95.0–97.5%)" in missed and "40–80 ms" in missed
    assert "5.5–6.0 on 2 cores" in missed and "other processes held the cores" in missed
    assert "other processes" not in quiet_miss and "the server's own" in quiet_miss
    assert "not measured" in c.slo_held_commentary([{**run(0, 1.0), "admitted": 0}], 5.0, 2)[0]
