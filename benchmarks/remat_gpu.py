"""The transformer stack of BENCHMARKS.md's remat section on a GPU: the largest batch whose SGD training step fits
a memory budget, and the step time, with no checkpointing, ``checkpoint_sequential`` (√n segments) and
chipfit's plan (``chipfit.remat.plan``, re-solved tighter when the measured peak exceeds the budget). Peaks are
``torch.cuda.max_memory_allocated`` in chipfit's measurement worker (a process of its own), minus what was
allocated before the module was built.

Needs only torch, numpy and highspy with ``PYTHONPATH=src``::

    PYTHONPATH=src python benchmarks/remat_gpu.py out.json                 # CUDA, budget 8192 MB
    PYTHONPATH=src python benchmarks/remat_gpu.py out.json --device cpu --dry-run   # a tiny check on the CPU

Prints a markdown table and writes the numbers as JSON to the path given. Meant to finish in under 4 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve()
SIZES = {"full": (12, 512, 8, 2048, 512), "dry": (3, 32, 2, 64, 16)}  # layers, d_model, heads, feed-forward, tokens


def _size() -> tuple[int, int, int, int, int]:
    import os

    return SIZES[os.environ.get("CHIPFIT_REMAT_GPU_SIZE", "full")]


def build() -> nn.Module:
    """The transformer stack (sizes from CHIPFIT_REMAT_GPU_SIZE: the worker imports this file and builds it)."""
    layers, d, heads, ff, _ = _size()
    torch.manual_seed(0)
    return nn.Sequential(
        *[nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True) for _ in range(layers)]
    )


def _row(label: str, r: Any, b0_ms: float | None, base_max: int) -> dict[str, Any]:
    best = r.best.result if r.best and r.best.result else None
    return {"schedule": label, "max_batch": r.max_batch, "x_none": r.max_batch / base_max if base_max else None,
            "peak_mb": best.peak_mb if best else None, "b0_ms": b0_ms}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-mb", type=float, default=None, help="default 8192 (dry run: 6)")
    ap.add_argument("--dry-run", action="store_true", help="a tiny model, for checking the script on a CPU")
    ap.add_argument("--time-limit", type=float, default=10.0, help="solver seconds per plan")
    args = ap.parse_args()
    import os

    os.environ["CHIPFIT_REMAT_GPU_SIZE"] = "dry" if args.dry_run else "full"
    budget = args.budget_mb or (6.0 if args.dry_run else 8192.0)
    from chipfit.remat.batch import Calibration, fit_plan, measure_plain, search
    from chipfit.remat.measure import Probe, Worker
    from chipfit.remat.step import StepSpec, parse_inputs

    layers, d, heads, ff, tokens = _size()
    spec = StepSpec(f"{HERE}:build", parse_inputs([f"x:float32[B,{tokens},{d}]"]))
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    module = spec.build_module().to(args.device)
    quick = {"min_steps": 1, "min_time_s": 0.0}
    timed = quick if args.dry_run else {"min_steps": 5, "min_time_s": 0.5}
    res = 1 / 2 if args.dry_run else 1 / 16  # the searches' resolution (the plan's: twice this)
    with Worker(spec, args.device, threads=1 if args.device == "cpu" else 0) as w:
        base = search(lambda b: measure_plain(w, b, budget), budget, "none", progress=log, resolution=res)
        seq = search(lambda b: measure_plain(w, b, budget, Probe(b, "sequential", **quick)), budget,  # type: ignore[arg-type]
                     "checkpoint_sequential", progress=log, resolution=res)  # fmt: skip
        cal = Calibration()

        def planned_at(b: int) -> Any:
            return fit_plan(w, spec, b, budget, time_limit_s=args.time_limit, module=module, calibration=cal,
                            device=args.device, progress=log)  # fmt: skip

        planned = search(planned_at, budget, "chipfit plan", known_fit=base.best, progress=log, resolution=2 * res)
        b0 = max(base.max_batch, 1)
        plan = planned.best.plan if planned.best else None
        probes = {
            "none": Probe(b0, **timed),  # type: ignore[arg-type]
            "checkpoint_sequential": Probe(b0, "sequential", **timed),  # type: ignore[arg-type]
            "chipfit plan": Probe(b0, "plan", plan.to_json(), **timed) if plan else Probe(b0, **timed),  # type: ignore[arg-type]
        }
        times: dict[str, list[float]] = {k: [] for k in probes}
        for _ in range(1 if args.dry_run else 2):  # alternated, the fastest of two kept
            for label, probe in probes.items():
                r = w.probe(probe)
                if r.ok and r.step_ms is not None:
                    times[label].append(r.step_ms)
    ms = {k: min(v) if v else None for k, v in times.items()}
    rows = [_row(k, r, ms[k], base.max_batch) for k, r in (("none", base), ("checkpoint_sequential", seq),
                                                             ("chipfit plan", planned))]  # fmt: skip
    doc = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "budget_mb": budget,
        "model": {"layers": layers, "d_model": d, "heads": heads, "ff": ff, "tokens": tokens},
        "b0": b0,
        "rows": rows,
        "plan": plan.to_json() if plan else None,
        "predicted_peak_mb": plan.peak_mb if plan else None,
        "seconds": time.perf_counter() - t0,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2))
    where = f"budget {budget:g} MB on {doc['device']} (step times at batch {b0}; {doc['seconds']:.0f} s)"
    print(f"transformer stack ({layers} blocks, d_model {d}, {tokens} tokens), SGD, {where}\n")
    print("| schedule | largest batch | × none | measured peak MB | predicted peak MB | step ms at batch b0 | × none |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        pred = f"{plan.peak_mb:.1f}" if row["schedule"] == "chipfit plan" and plan else "–"
        ratio = row["b0_ms"] / rows[0]["b0_ms"] if row["b0_ms"] and rows[0]["b0_ms"] else None
        cells = [row["schedule"], row["max_batch"], f"{row['x_none'] or 0:.2f}×", f"{row['peak_mb'] or 0:.1f}", pred,
                 f"{row['b0_ms'] or 0:.2f}", f"{ratio or 0:.2f}×"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
