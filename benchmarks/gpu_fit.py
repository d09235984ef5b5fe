"""A GPU node's measurements without Ray: `chipfit.fit` on this machine, with the same isolated measurement worker
a farm node runs, over ONNX Runtime (CPU, and CUDA/TensorRT where onnxruntime-gpu is installed) and torch (CPU and
CUDA: eager, compiled, bfloat16 autocast). The model is a small transformer encoder built here with random weights
(seeded); quality is fidelity to the model's own outputs (no labels).

    PYTHONPATH=src python3 benchmarks/gpu_fit.py OUT_DIR [--quick]

Writes OUT_DIR/gpu_fit.json (every candidate) and OUT_DIR/gpu_fit.md (the table for BENCHMARKS.md); prints both.
--quick: a smaller model and fewer batches (a CPU dry run of the script)."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _encoder(width: int, layers: int, heads: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).reshape(b, s, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, width))
            return x + self.ff(self.n2(x))

    torch.manual_seed(0)
    return nn.Sequential(*[Block() for _ in range(layers)], nn.LayerNorm(width)).eval()


def _machine() -> dict[str, str]:
    import onnxruntime as ort
    import torch

    gpu = "none"
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        gpu = subprocess.run(q, capture_output=True, text=True, check=False).stdout.strip() or "none"
    return {
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()})",
        "onnxruntime": f"{ort.__version__} providers {', '.join(ort.get_available_providers())}",
    }


def render(payload: dict[str, Any]) -> list[str]:
    """The markdown table of one run (``gpu_fit.json``'s payload)."""
    rows = payload["rows"]
    lines = [
        f"{payload['summary']}; fit in {payload['elapsed_s']:.0f} s; winner: `{payload['winner']}`.",
        "",
        "| candidate | device | batch | p50 ms | p99 ms | items/s | fidelity (cosine) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["batch"], r["p50_ms"] or 1e9)):
        if row["status"] == "skipped":
            continue
        f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
        lines.append(
            f"| `{row['candidate']}` | {row['target']} | {row['batch']} | {f(row['p50_ms'], '.3f')} | "
            f"{f(row['p99_ms'], '.3f')} | {f(row['throughput'], '.0f')} | {f(row['fidelity'], '.6f')} | "
            f"{row['status']}{': ' + row['error'][:80] if row['error'] and row['status'] != 'ok' else ''} |"
        )
    skipped = sorted({f"{r['backend']} on {r['target']}: {r['error']}" for r in rows if r["status"] == "skipped"})
    return [*lines, "", *[f"- skipped: {s}" for s in skipped[:8]]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    import chipfit
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.space import SpaceOptions

    args.out.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    print(json.dumps(machine, indent=1), flush=True)
    width, layers, seq = (64, 2, 16) if args.quick else (384, 6, 128)
    net = _encoder(width, layers, heads=4 if args.quick else 6)
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((64, seq, width)).astype(np.float32)}
    np.savez(args.out / "eval.npz", **data)
    space = SpaceOptions(
        backends=("onnxruntime", "torch"),
        batch_sizes=(1, 8) if args.quick else (1, 32),
        passes=(),  # fp32 graphs: the GPU paths (torch bf16 autocast) are the precision axis here
        opt_levels=("all",),
    )
    started = time.monotonic()
    result = chipfit.fit(
        net,
        args.out / "eval.npz",
        {"objective": "latency"},
        example_inputs=(torch.zeros(2, seq, width),),
        space=space,
        settings=MeasureSettings(predict=False, probe=False),
        home=args.out / "home",
        store=f"sqlite:///{args.out / 'home' / 'gpu.db'}",
        progress=lambda r: print(f"  {r.measurement.status:8s} {r.candidate.label()}", flush=True),
    )
    elapsed = time.monotonic() - started
    rows = []
    for r in result.candidates:
        m = r.measurement
        rows.append(
            {
                "candidate": r.candidate.label(),
                "backend": r.candidate.backend,
                "target": r.candidate.target,
                "batch": r.candidate.batch,
                "options": r.candidate.options,
                "status": m.status if r.source != "skipped" else "skipped",
                "p50_ms": m.metrics.get("p50_ms"),
                "p99_ms": m.metrics.get("p99_ms"),
                "throughput": m.metrics.get("throughput"),
                "fidelity": m.metrics.get("fidelity"),
                "error": (m.error or "")[:200] or None,
            }
        )
    payload = {
        "machine": machine,
        "elapsed_s": elapsed,
        "rows": rows,
        "summary": f"Model: transformer encoder, {layers} layers, width {width}, sequence {seq} (random weights)",
        "winner": result.winner.candidate.label() if result.winner else "none",
    }
    (args.out / "gpu_fit.json").write_text(json.dumps(payload))
    lines = render(payload)
    (args.out / "gpu_fit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
