"""Precision benchmarks (issue 3): chipfit's winner vs ONNX Runtime's default fp32 session vs PyTorch eager,
timed interleaved in one process, on the digits CNN and on a BERT-like encoder with and without outliers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))

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


def _table(result: Any, feeds: dict[str, np.ndarray], model: Path, torch_module: Any, art: Path) -> list[str]:
    winner = chipfit.runtime.load(art)
    runners = {"ort": _ort_default(model), "winner": winner.run, "torch": _torch(torch_module)}
    ref_ms = result.reference.metric("p50_ms") if result.reference else 1.0
    r = interleaved(runners, feeds, rounds=10, per_round=max(10, min(200, int(200 / max(ref_ms, 0.05)))))
    w, t, o = r["winner"], r["torch"], r["ort"]
    return [
        "| runner | p50 ms | p99 ms | speedup vs ORT default (median of 10 interleaved rounds, IQR) |",
        "|---|---|---|---|",
        f"| ONNX Runtime default session, fp32 | {o['p50_ms']:.3f} | {o['p99_ms']:.3f} | 1 |",
        f"| chipfit winner | {w['p50_ms']:.3f} | {w['p99_ms']:.3f} | **{w['speedup_median']:.2f}×** "
        f"({w['speedup_q25']:.2f}–{w['speedup_q75']:.2f}) |",
        f"| PyTorch eager, fp32 | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['speedup_median']:.2f}× "
        f"({t['speedup_q25']:.2f}–{t['speedup_q75']:.2f}) |",
        "",
    ]


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


def bench_digits_cnn(work: Path) -> list[str]:
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
    if result.winner:
        lines += _table(
            result, {"image": np.ascontiguousarray(x[:1])}, ex / "model.onnx", _digits_torch(), work / "cnn"
        )
    return lines + _candidates(result)


def bench_transformer(work: Path, outliers: float) -> list[str]:
    from chipfit.testing.models import bert_inputs, bert_like, export_onnx

    name = f"bert-o{int(outliers)}"
    module = bert_like(outliers=outliers, classes=16)
    model = export_onnx(module, bert_inputs(1), work / f"{name}.onnx")
    np.savez(work / f"{name}.npz", **bert_inputs(160, seed=3))
    result = chipfit.fit(
        model, work / f"{name}.npz", min_fidelity=0.99, out=work / name, space=SpaceOptions(batch_sizes=(1,)),
        settings=MeasureSettings(eval_limit=64), store=f"sqlite:///{work / 'bench.db'}", time_budget="20m",
    )  # fmt: skip
    kind = f"outlier channels ×{outliers:g}" if outliers else "no outliers"
    lines = [
        f"## Precision: BERT-like encoder (6 layers, hidden 384, 12 heads, seq 128, random weights, {kind}), "
        "`--min-fidelity 0.99` (cosine vs fp32), batch 1",
        "",
        f"Winner: `{result.winner.candidate.label() if result.winner else 'none'}`, fidelity "
        f"{result.winner.metric('fidelity') if result.winner else float('nan'):.5f}; "
        f"fit took {result.elapsed_s:.0f} s.",
        "",
    ]
    if result.winner:
        table = _table(result, bert_inputs(1, seed=9), model, module, work / name)
        speedup = float(table[3].split("**")[1].rstrip("×"))
        fid = result.winner.metric("fidelity")
        met = speedup >= 1.6 and fid >= 0.99
        verdict = "reached" if met else "not reached"
        lines += [
            *table,
            f"Goal (≥1.6× over ONNX Runtime's default fp32 session at cosine ≥ 0.99): **{verdict}**"
            f" — {speedup:.2f}× at cosine {fid:.4f}.",
            "",
        ]
    return lines + _candidates(result) + _mixed(result)
