"""BENCHMARKS.md's remat section (`benchmarks/run.py --only remat`): the largest batch whose training step fits a
fixed memory budget, and the step time, for a deep MLP chain, a residual CNN and a stack of transformer blocks,
under five schedules:

- **none**: the step as it is;
- **checkpoint_sequential**: ``torch.utils.checkpoint.checkpoint_sequential`` with √n segments;
- **compile budget**: ``torch.compile`` (backend ``aot_eager``: AOTAutograd's min-cut partitioner, where
  ``torch._functorch.config.activation_memory_budget`` acts, with eager kernels) at the best fraction of a
  sweep (the least measured peak at the plain step's largest batch);
- **chipfit milp** and **chipfit lp-rounding**: ``chipfit.remat.plan`` with that solver, re-solved tighter
  when the measured peak exceeds the budget (as ``chipfit remat`` does).

Every number is measured in chipfit's isolated worker (``chipfit.remat.measure``: resident high-water mark
above torch's import, SGD). Step times are at the plain step's largest batch (each schedule applied there), so
their ratio to the plain step's is the cost of recomputing; the faster of two alternated measurements is kept.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve()
BUDGET_MB = 200.0
FRACTIONS = (0.05, 0.2, 0.5)  # the compile sweep (0.0 checkpoints everything, 1.0 is the default plan)
RESOLUTION = 1 / 8
THREADS = 1  # one core per step (the worker and the planner): steadier times on a machine shared with other jobs


# ----------------------------------------------------------------------------------------------- the models
def build_mlp() -> nn.Module:
    """A deep MLP chain: 16 blocks of Linear(256, 256) → LayerNorm → GELU."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU()) for _ in range(16)])


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def build_cnn() -> nn.Module:
    """A residual CNN: a stem conv, 8 residual blocks of 16 channels at 32×32, pooled to 10 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        *[ResBlock(16) for _ in range(8)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def build_transformer() -> nn.Module:
    """A stack of 6 transformer encoder blocks (d_model 128, 4 heads, feed-forward 256) on 128 tokens."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True) for _ in range(6)])


MODELS = {
    "deep MLP chain": ("build_mlp", "x:float32[B,256]"),
    "residual CNN": ("build_cnn", "x:float32[B,3,32,32]"),
    "transformer stack": ("build_transformer", "x:float32[B,128,128]"),
}


# ----------------------------------------------------------------------------------------------- measuring
def _spec(fn: str, inputs: str) -> Any:
    from chipfit.remat.step import StepSpec, parse_inputs

    return StepSpec(f"{HERE}:{fn}", parse_inputs([inputs]))


def _pair(worker: Any, probe: Any, plain: Any) -> Any:
    """The faster of two measurements of ``probe`` alternated with the plain step's (appended to ``plain``)."""
    out = []
    for _ in range(2):
        plain.append(worker.probe(type(probe)(probe.batch, min_steps=2, min_time_s=0.0)))
        out.append(worker.probe(probe))
    ok = [r for r in out if r.ok]
    return min(ok, key=lambda r: r.step_ms) if ok else out[0]


def bench_model(name: str, fn: str, inputs: str, budget_mb: float, log: Any = print) -> dict[str, Any]:
    from chipfit.remat.batch import Calibration, fit_plan, measure_plain, search
    from chipfit.remat.measure import Probe, Worker

    spec = _spec(fn, inputs)
    module = spec.build_module()
    rows: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    quick = {"min_steps": 0, "min_time_s": 0.0}  # SGD: one step shows the peak

    def run(label: str, make: Any, known: Any = None, compiled: bool = False) -> Any:
        """One schedule's search, in a worker of its own (what one schedule leaves resident is not the next's)."""
        with Worker(spec, threads=THREADS, warm_compile=compiled) as w:
            r = search(make(w), budget_mb, label, known_fit=known, resolution=RESOLUTION, progress=log)
        rows[label] = {"max_batch": r.max_batch, "peak_mb": r.peak_mb, "best": r.best}
        return r

    base = run("none", lambda w: lambda b: measure_plain(w, b, budget_mb))
    b0 = max(base.max_batch, 1)
    run("checkpoint_sequential", lambda w: lambda b: measure_plain(w, b, budget_mb, Probe(b, "sequential", **quick)))
    sweep = {}
    for f in FRACTIONS:  # each fraction in a fresh worker too: a compiled step leaves memory resident
        with Worker(spec, threads=THREADS, warm_compile=True) as w:
            sweep[f] = w.probe(Probe(b0, "compile", memory_budget=f, **quick))  # type: ignore[arg-type]
    ok = {f: r for f, r in sweep.items() if r.ok}
    best_f = min(ok, key=lambda f: (ok[f].peak_mb, ok[f].step_ms)) if ok else FRACTIONS[0]
    log(f"compile sweep at batch {b0}: " + ", ".join(f"{f}: {r.peak_mb} MB" for f, r in sweep.items()))
    run(
        f"compile budget {best_f}",
        lambda w: lambda b: measure_plain(w, b, budget_mb, Probe(b, "compile", memory_budget=best_f, **quick)),
        compiled=True,
    )
    for solver in ("milp", "lp-rounding"):
        cal = Calibration()
        run(
            f"chipfit {solver}",
            lambda w, s=solver, c=cal: (
                lambda b: fit_plan(w, spec, b, budget_mb, solver=s, time_limit_s=20.0, module=module, calibration=c)
            ),
            base.best,
        )
    with Worker(spec, threads=THREADS, warm_compile=True) as w:
        # step times at the plain step's largest batch, each schedule applied there
        plain: list[Any] = []
        for label, row in rows.items():
            best = row["best"]
            if label == "none":
                continue
            if label.startswith("chipfit"):
                plan = best.plan if best is not None else None
                probe = (
                    Probe(b0, "plan", plan.to_json(), min_steps=2, min_time_s=0.0)
                    if plan
                    else Probe(b0, min_steps=2, min_time_s=0.0)
                )
                row["predicted_mb"] = plan.peak_mb if plan else None
                row["overhead"] = plan.overhead if plan else 0.0
                row["cost_ms"] = plan.solver_cost_ms if plan else None
                row["solver"] = plan.solver if plan else "none"
            elif label == "checkpoint_sequential":
                probe = Probe(b0, "sequential", min_steps=2, min_time_s=0.0)
            else:
                probe = Probe(b0, "compile", memory_budget=best_f, min_steps=2, min_time_s=0.0)
            row["step"] = _pair(w, probe, plain)
        plain_ok = [r for r in plain if r.ok]
        rows["none"]["step"] = min(plain_ok, key=lambda r: r.step_ms) if plain_ok else None
        # LP rounding vs MILP on the same batch (the MILP's largest): predicted recompute cost of each
        bm = rows["chipfit milp"]["max_batch"]
        lp_vs_milp = None
        if bm > base.max_batch:
            from chipfit.remat import plan as solve

            x = spec.example_inputs(bm)
            a = solve(module, x, budget_mb, solver="milp", time_limit_s=20.0)
            c = solve(module, x, budget_mb, solver="lp-rounding", time_limit_s=20.0)
            lp_vs_milp = (a.solver_cost_ms, c.solver_cost_ms, a.overhead, c.overhead, a.n_nodes, a.optimality_gap)
    return {
        "name": name,
        "rows": rows,
        "b0": b0,
        "lp_vs_milp": lp_vs_milp,
        "seconds": time.perf_counter() - t0,
        "sweep": sweep,
    }


# ----------------------------------------------------------------------------------------------- markdown
def _f(v: Any, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _table(res: dict[str, Any], budget_mb: float) -> list[str]:
    rows = res["rows"]
    base = rows["none"]
    bmax, bstep = base["max_batch"], base["step"].step_ms if base["step"] else None
    lines = [
        f"### {res['name']} (budget {budget_mb:g} MB; step times at batch {res['b0']}; {res['seconds']:.0f} s)",
        "",
        "| schedule | largest batch | × none | measured peak MB (at its largest batch) | predicted peak MB | "
        f"step ms at batch {res['b0']} | × none | predicted recompute overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        step = row.get("step")
        ms = step.step_ms if step is not None and step.ok else None
        pred = row.get("predicted_mb")
        lines.append(
            f"| {label} | {row['max_batch']} | {row['max_batch'] / bmax:.2f}× | {_f(row['peak_mb'], '.1f')} | "
            f"{_f(pred, '.1f')} | {_f(ms, '.1f')} | {_f(ms / bstep if ms and bstep else None, '.2f')}"
            f"{'×' if ms and bstep else ''} | {_f(row.get('overhead'), '.1%')} |"
        )
    lines.append("")
    return lines


def _goals(results: list[dict[str, Any]]) -> list[str]:
    out = ["### Goals", ""]
    for res in results:
        rows, name = res["rows"], res["name"]
        bmax = rows["none"]["max_batch"]
        bstep = rows["none"]["step"].step_ms if rows["none"]["step"] else None
        seq = rows["checkpoint_sequential"]["max_batch"]
        for solver in ("milp", "lp-rounding"):
            r = rows[f"chipfit {solver}"]
            ratio = r["max_batch"] / bmax if bmax else None
            step = r.get("step")
            t = step.step_ms / bstep if step is not None and step.ok and bstep else None
            met = ratio is not None and t is not None and ratio >= 2 and t <= 1.3
            pred, meas = r.get("predicted_mb"), r["peak_mb"]
            err = abs(pred - meas) / meas if pred and meas else None
            within = "within" if err is not None and err <= 0.1 else "not within"
            out.append(
                f"- {name}, {solver}: {_f(ratio, '.2f')}× the plain largest batch at {_f(t, '.2f')}× its step time "
                f"({'met' if met else 'not met'}: ≥ 2× at ≤ 1.3×); {r['max_batch']} vs checkpoint_sequential's {seq} "
                f"({'larger' if r['max_batch'] > seq else 'not larger'}); predicted peak {_f(pred, '.1f')} MB vs "
                f"measured {_f(meas, '.1f')} MB ({_f(err, '.1%')}, {within} 10%)."
            )
        lv = res["lp_vs_milp"]
        if lv:
            milp, lp, om, ol, nodes, gap = lv
            r = ol / om if om else (1.0 if ol == om else None)
            out.append(
                f"- {name}: LP rounding's predicted recompute overhead {_f(ol, '.1%')} vs the MILP's {_f(om, '.1%')} "
                f"({_f(r, '.3f')}×; {'within' if r is not None and r <= 1.1 else 'not within'} 1.1×) at batch "
                f"{rows['chipfit milp']['max_batch']} on {nodes} solver nodes (MILP gap {_f(gap, '.2%')}; whole "
                f"schedules' solver objectives {_f(lp, '.4g')} vs {_f(milp, '.4g')} ms)."
            )
    return [*out, ""]


def section(budget_mb: float = BUDGET_MB, log: Any = None) -> list[str]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    torch.set_num_threads(THREADS)
    results = [bench_model(name, fn, inputs, budget_mb, log) for name, (fn, inputs) in MODELS.items()]
    lines = [
        "## Training within a memory budget: chipfit remat vs checkpointing baselines",
        "",
        f"The largest batch whose SGD training step fits {budget_mb:g} MB and its step time, on one core of this CPU, "
        "measured in chipfit's isolated worker (resident high-water mark above an idle interpreter with torch "
        "imported: parameters, gradients and activations). `compile budget F` is torch.compile (aot_eager) with "
        f"`activation_memory_budget = F`, the best of {', '.join(map(str, FRACTIONS))} at the plain largest batch. "
        f"Searches stop within {RESOLUTION:.0%} of the largest batch. Written by `benchmarks/remat_rows.py` "
        f"(torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start: "
        "step times on a shared machine are noisy; the peaks are not).",
        "",
    ]
    for res in results:
        lines += _table(res, budget_mb)
    return lines + _goals(results)


if __name__ == "__main__":
    print("\n".join(section(float(sys.argv[1]) if len(sys.argv) > 1 else BUDGET_MB)))
