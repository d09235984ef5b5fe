"""Precision benchmarks (issue 3): chipfit's winner vs ONNX Runtime's default fp32 session vs PyTorch eager,
timed interleaved in one process, on the digits CNN and on a BERT-like encoder with and without outliers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))

from commentary import PRECISION_GOAL_FIDELITY, precision_commentary, precision_goal  # noqa: E402
from interleave import interleaved  # noqa: E402

import chipfit  # noqa: E402
from chipfit.search.driver import MeasureSettings  # noqa: E402
from chipfit.search.space import SpaceOptions  # noqa: E402


def _ort_default(model: Path) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, dict(feeds))


def _torch(module: Any) -> Any:
    import torch

    def run(feeds: Any) -> Any:
        with torch.inference_mode():
            return module(*(torch.from_numpy(v) for v in feeds.values()))

    return run


def _digits_torch() -> Any:
    import onnx
    import torch
    from make_example import DigitsCNN
    from onnx import numpy_helper

    net = DigitsCNN().eval()
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(
        str(ROOT / "examples" / "digits" / "model.onnx")).graph.initializer}  # fmt: skip
    net.load_state_dict({k: weights[k] for k in net.state_dict()})
    return net


def _table(
    result: Any, feeds: dict[str, np.ndarray], model: Path, torch_module: Any, art: Path
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The interleaved timing table, and its numbers (per runner: ``interleaved``'s result)."""
    winner = chipfit.runtime.load(art)
    runners = {"ort": _ort_default(model), "winner": winner.run, "torch": _torch(torch_module)}
    ref_ms = result.reference.metric("p50_ms") if result.reference else 1.0
    r = interleaved(runners, feeds, rounds=10, per_round=max(10, min(200, int(200 / max(ref_ms, 0.05)))))
    w, t, o = r["winner"], r["torch"], r["ort"]
    lines = [
        "| runner | p50 ms | p99 ms | speedup vs ORT default (median of 10 interleaved rounds, IQR) |",
        "|---|---|---|---|",
        f"| ONNX Runtime default session, fp32 | {o['p50_ms']:.3f} | {o['p99_ms']:.3f} | 1 |",
        f"| chipfit winner | {w['p50_ms']:.3f} | {w['p99_ms']:.3f} | **{w['speedup_median']:.2f}×** "
        f"({w['speedup_q25']:.2f}–{w['speedup_q75']:.2f}) |",
        f"| PyTorch eager, fp32 | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['speedup_median']:.2f}× "
        f"({t['speedup_q25']:.2f}–{t['speedup_q75']:.2f}) |",
        "",
    ]
    return lines, r


def summary(result: Any, model: str, quality_name: str, timing: Any, outliers: float | None = None) -> dict:
    """What the precision reading (`commentary.precision_commentary`) needs of one run, as plain data."""
    w = result.winner
    cands = []
    for c in result.candidates:
        p50 = c.metric("p50_ms") if c.measurement.ok else c.metric("probe_p50_ms")
        cands.append(
            {
                "label": c.candidate.label(),
                "passes": [p["name"] for p in c.candidate.passes],
                "status": c.measurement.status,
                "p50_ms": p50,
                "skip": c.candidate.skip,
            }
        )
    return {
        "model": model,
        "outliers": outliers,
        "quality_name": quality_name,
        "winner": None
        if w is None
        else {
            "label": w.candidate.label(),
            "passes": [p["name"] for p in w.candidate.passes],
            "quality": w.metric(quality_name),
        },
        "timing": timing,
        "reference_p50": result.reference.metric("p50_ms") if result.reference else None,
        "candidates": cands,
    }


def reading(runs: list[dict]) -> list[str]:
    """The reading of the precision sections, from their runs' numbers (see `summary`)."""
    from chipfit.hardware.detect import cpu_features, local_machine

    return precision_commentary(runs, cpu_features()["int8_dot"], local_machine()["cpu"]["isa"])


def _candidates(result: Any) -> list[str]:
    lines = ["| variant | options | status | p50 ms (fit) | quality |", "|---|---|---|---|---|"]
    for c in result.candidates:
        if c.source == "skipped" and not c.candidate.skip:
            continue
        q = c.quality()
        p50 = c.metric("p50_ms") if c.measurement.ok else c.metric("probe_p50_ms")
        p50_s = "" if p50 is None else f"{p50:.3f}" + ("" if c.measurement.ok else " (probe)")
        lines.append(
            f"| {c.candidate.pass_label()} | {c.candidate.backend} {c.candidate.option_label()} | "
            f"{c.measurement.status} | {p50_s} | {'' if q is None else f'{q:.5f}'} |"
        )
    return [*lines, ""]


def _mixed(result: Any) -> list[str]:
    mp = result.mixed_precision
    if not mp:
        return ["The accuracy-aware mixed-precision search did not run: no int8 candidate that was faster than "
                "every feasible one missed the quality bound.", ""]  # fmt: skip
    lines = [f"Mixed precision on `{mp['base']}` (missed: {mp['bound']}):", ""]
    for s in mp["steps"]:
        added = ", ".join(f"`{n}`" for n, _ in s["added"])
        lines.append(f"- {s['kept_fp32']} kept fp32 (+{added}): {s['status']}, p50 {s['p50_ms']}, "
                     f"quality {s['quality']}")  # fmt: skip
    return [*lines, f"- outcome: {mp['outcome']}", ""]


def bench_digits_cnn(work: Path) -> tuple[list[str], dict]:
    ex = ROOT / "examples" / "digits"
    result = chipfit.fit(
        ex / "model.onnx", ex / "eval.npz", max_accuracy_drop=0.01, out=work / "cnn",
        space=SpaceOptions(batch_sizes=(1,)), store=f"sqlite:///{work / 'bench.db'}",
    )  # fmt: skip
    x = np.load(ex / "eval.npz")["image"]
    lines = [
        "## Precision: digits CNN, `--max-accuracy-drop 0.01`, batch 1",
        "",
        f"Winner: `{result.winner.candidate.label() if result.winner else 'none'}`, accuracy "
        f"{result.winner.metric('accuracy') if result.winner else float('nan'):.4f} vs the original's "
        f"{result.reference.metric('accuracy') if result.reference else float('nan'):.4f}.",
        "",
    ]
    timing = None
    if result.winner:
        table, timing = _table(
            result, {"image": np.ascontiguousarray(x[:1])}, ex / "model.onnx", _digits_torch(), work / "cnn"
        )
        lines += table
    return lines + _candidates(result), summary(result, "digits CNN", "accuracy", timing)


def bench_transformer(work: Path, outliers: float) -> tuple[list[str], dict]:
    from chipfit.testing.models import bert_inputs, bert_like, export_onnx

    name = f"bert-o{int(outliers)}"
    module = bert_like(outliers=outliers, classes=16)
    model = export_onnx(module, bert_inputs(1), work / f"{name}.onnx")
    np.savez(work / f"{name}.npz", **bert_inputs(160, seed=3))
    result = chipfit.fit(
        model, work / f"{name}.npz", min_fidelity=PRECISION_GOAL_FIDELITY, out=work / name,
        space=SpaceOptions(batch_sizes=(1,)), settings=MeasureSettings(eval_limit=64),
        store=f"sqlite:///{work / 'bench.db'}", time_budget="20m",
    )  # fmt: skip
    kind = f"outlier channels ×{outliers:g}" if outliers else "no outliers"
    lines = [
        f"## Precision: BERT-like encoder (6 layers, hidden 384, 12 heads, seq 128, random weights, {kind}), "
        f"`--min-fidelity {PRECISION_GOAL_FIDELITY:g}` (cosine vs fp32), batch 1",
        "",
        f"Winner: `{result.winner.candidate.label() if result.winner else 'none'}`, fidelity "
        f"{result.winner.metric('fidelity') if result.winner else float('nan'):.5f}; "
        f"fit took {result.elapsed_s:.0f} s.",
        "",
    ]
    timing = None
    if result.winner:
        table, timing = _table(result, bert_inputs(1, seed=9), model, module, work / name)
        lines += [*table, precision_goal(timing["winner"], result.winner.metric("fidelity")), ""]
    run = summary(result, f"BERT-like encoder ({kind})", "fidelity", timing, outliers)
    return lines + _candidates(result) + _mixed(result), run
