"""Per backend, on the benchmark CNN (digits) and a BERT-like transformer: p50 at batch 1 and throughput
at the best of batch 1/8/32, measured interleaved in one process, and achieved GFLOP/s against the
machine's measured SGEMM peak. TVM is tuned with a small budget (its database is kept between runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from commentary import backends_commentary
from interleave import interleaved

import chipfit
from chipfit.backends import backend_info, get_backend
from chipfit.hardware.detect import cpu_quota
from chipfit.hardware.microbench import peak_rates

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32)


def _configs(tune_trials: int, tune_time_s: float) -> list[tuple[str, str, dict[str, Any]]]:
    out = [("onnxruntime", "default session", {})]
    if backend_info("openvino").available:
        out += [("openvino", "LATENCY", {"hint": "LATENCY"}), ("openvino", "THROUGHPUT", {"hint": "THROUGHPUT"})]
    if backend_info("torch").available:
        out += [("torch", "eager", {"mode": "eager"}), ("torch", "torch.compile", {"mode": "compile"})]
    if backend_info("tvm").available:
        per_batch = tune_time_s / len(BATCHES)
        out += [
            ("tvm", "untuned (batch 1 only: naive loops)", {"tune_trials": 0}),
            (
                "tvm",
                f"MetaSchedule ≤{tune_trials} trials/task, ≤{per_batch:.0f} s per batch size",
                {"tune_trials": tune_trials, "tune_time_s": per_batch},
            ),
        ]
    return out


def bench_model(
    title: str, model: Any, feeds_for: Any, peak: float, tune: tuple[int, float]
) -> tuple[list[str], dict[str, Any]]:
    """The model's table, and its numbers for `commentary.backends_commentary`."""
    cores = cpu_quota()
    flops = model.stats.flops
    lines = [f"### {title}", "", f"{flops / 1e6:.1f} MFLOP per sample (from the ONNX graph).", ""]
    lines += [
        "| backend | options | p50 ms (b1) | best batch | throughput /s | GFLOP/s at best batch | % of SGEMM peak |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    results: dict[str, dict[int, dict[str, float]]] = {}
    runners: dict[int, dict[str, Any]] = {b: {} for b in BATCHES}
    for name, label, opts in _configs(*tune):
        b = get_backend(name)
        if name == "torch" and not (model.path.with_suffix(".pt2")).exists():
            lines.append(f"| torch | {label} | – | – | – | – | – (the model was given as ONNX) |")
            continue
        for batch in runners:
            if opts.get("tune_trials") == 0 and batch > 1:  # untuned TVM takes seconds per run at large batches
                continue
            o = {**opts, "threads": cores} if name != "onnxruntime" else {}
            if b.capabilities.specializes_batch:
                o["batch"] = batch
            try:
                runners[batch][f"{name} · {label}"] = b.compile(model.path, "cpu", o).run
            except Exception as exc:
                lines.append(f"| {name} | {label} | failed: {str(exc)[:120]} | | | | |")
                break
    for batch, fns in runners.items():
        r = interleaved(fns, feeds_for(batch), max_round_s=0.3)
        for key, v in r.items():
            results.setdefault(key, {})[batch] = v
    rows = []
    for key, per in results.items():
        name, label = key.split(" · ", 1)
        best = max(per, key=lambda bb: bb / per[bb]["p50_ms"])
        thr = best / per[best]["p50_ms"] * 1000
        gflops = flops * thr / 1e9
        row = [name, label, f"{per[1]['p50_ms']:.4f}", str(best), f"{thr:.0f}", f"{gflops:.1f}"]
        lines.append("| " + " | ".join([*row, f"{100 * gflops / peak:.1f}%"]) + " |")
        p50 = {bb: v["p50_ms"] for bb, v in per.items()}
        rows.append({"backend": name, "label": label, "p50": p50, "best": best, "pct": 100 * gflops / peak})
    return [*lines, ""], {"title": title, "mflop": flops / 1e6, "rows": rows}


def section(work: Path, tune_trials: int = 16, tune_time_s: float = 300.0) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    rates = peak_rates()  # cached per machine in the user's chipfit home
    os.environ.setdefault("CHIPFIT_HOME", str(work / "home"))  # a fresh tuning database: trials as labelled
    peak = rates["fp32_gflops"]
    lines = [
        "## Backends side by side (issue 4)",
        "",
        f"Roof measured here by `chipfit.hardware.microbench` (numpy BLAS SGEMM 1024³, {cores} cores): "
        f"**{peak:.0f} GFLOP/s** fp32, memory copy {rates['mem_gbs']:.0f} GB/s. Each row's "
        "latency is the median of interleaved rounds against every other backend in one process; throughput "
        "is batch / p50 at the batch size (1, 8, 32) where it is highest.",
        "",
    ]
    ex = ROOT / "examples" / "digits"
    digits = chipfit.load_model(ex / "model.onnx")
    x = np.load(ex / "eval.npz")["image"]
    table, cnn = bench_model(
        "digits CNN (ONNX)", digits, lambda b: {"image": np.ascontiguousarray(x[:b])}, peak, (tune_trials, tune_time_s)
    )
    lines += table
    from chipfit.testing.models import bert_inputs, bert_like

    module = bert_like(layers=2, hidden=256, heads=4, seq=64)
    data = bert_inputs(64, seq=64)
    example = tuple(__import__("torch").from_numpy(v[:2]) for v in data.values())
    model = chipfit.load_model(module, example_inputs=example, input_names=list(data))

    def feeds(b: int) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[:b]) for k, v in data.items()}

    table, encoder = bench_model(
        "BERT-like encoder, 2 × 256, seq 64 (torch module)", model, feeds, peak, (tune_trials, tune_time_s)
    )
    return lines + table + backends_commentary([cnn, encoder])
