"""The device farm's section of BENCHMARKS.md: dispatch overhead, the same candidates' p50 through the farm vs a
local fit (interleaved), wall time over 2 local nodes vs 1 (each pinned to one core) with the driver's CPU share,
a node killed mid-fit, and the projected time for 20 targets × 100 candidates.

Real farms: `farm.local.up` starts a Ray head and `chipfit farm join --as TARGET` nodes with `ray start`, as the
README's `chipfit farm up --local-nodes` does. Every fit here is fresh (nothing reused from a store)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import chipfit
from chipfit.farm.fit import farm_fit
from chipfit.farm.local import down, state_path, up
from chipfit.measure.stats import TimingPolicy
from chipfit.search.driver import MeasureSettings
from chipfit.search.space import SpaceOptions

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
TARGET = "aws-c5.xlarge"
SPACE = SpaceOptions(backends=("onnxruntime",), batch_sizes=(1, 8, 32), threads=(1,), execution_modes=("sequential",))


def _settings(warmup_s: float = 0.2) -> MeasureSettings:
    timing = TimingPolicy(warmup_s=warmup_s, min_samples=200, max_time_s=1.0)
    return MeasureSettings(timing=timing, fresh=True, probe=False, predict=False, timeout_s=120)


def _p50s(candidates: list[Any]) -> dict[str, float]:
    return {r.candidate.id: r.measurement.metrics["p50_ms"] for r in candidates if r.measurement.ok}


def _farm(home: Path, nodes: int, cores_per_node: int = 1) -> str:
    return str(up([TARGET] * nodes, home, cores_per_node=cores_per_node, backends=["onnxruntime"])["address"])


def _farm_fit(address: str, home: Path, store: str, settings: MeasureSettings, **kw: Any) -> tuple[Any, float, float]:
    """The fit, its wall time and the driver's CPU seconds (this process: chipfit's driver and Ray's threads)."""
    cpu0, t0 = time.process_time(), time.monotonic()
    res = farm_fit(
        DIGITS / "model.onnx",
        DIGITS / "eval.npz",
        DIGITS / "chipfit.yaml",
        address=address,
        targets=[TARGET],
        space=SPACE,
        settings=settings,
        store=store,
        home=home,
        **kw,
    )
    return res, time.monotonic() - t0, time.process_time() - cpu0


def _local_fit(home: Path, store: str, settings: MeasureSettings) -> Any:
    return chipfit.fit(
        DIGITS / "model.onnx",
        DIGITS / "eval.npz",
        DIGITS / "chipfit.yaml",
        space=SPACE,
        settings=settings,
        store=store,
        home=home,
        progress=False,
    )


def _q(xs: list[float]) -> str:
    qs = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return f"{statistics.median(xs):.3f} ({qs[0]:.3f}–{qs[2]:.3f})"


def section(work: Path, rounds: int = 3) -> list[str]:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["CHIPFIT_HOME"] = str(home)
    store = f"sqlite:///{work / 'farm.db'}"
    lines = ["## Device farm (`chipfit fit --farm`, issue 17)", ""]
    # 1. one node (one core) vs the local fit, interleaved: overhead and p50 through the farm vs locally
    address = _farm(home, 1)
    try:
        local: list[dict[str, float]] = []
        farm: list[dict[str, float]] = []
        overheads: list[float] = []
        one_node: list[float] = []
        for r in range(rounds):
            order = ("local", "farm") if r % 2 == 0 else ("farm", "local")
            for which in order:
                if which == "local":
                    local.append(_p50s(_local_fit(home, store, _settings()).candidates))
                else:
                    res, wall, _cpu = _farm_fit(address, home, store, _settings())
                    farm.append(_p50s(res.targets[TARGET].fit.candidates))
                    overheads += res.overheads_s
                    one_node.append(wall)
    finally:
        down(home)
    ids = sorted(set.intersection(*[set(d) for d in local + farm]))
    farm_vs_local = [statistics.median(f[i] / lo[i] for f, lo in zip(farm, local, strict=True)) for i in ids]
    local_vs_local = [statistics.median(local[k + 1][i] / local[k][i] for k in range(rounds - 1)) for i in ids]
    lines += [
        f"Digits CNN (`examples/digits`), ONNX Runtime candidates on one thread (batch 1, 8 and 32): {len(ids)} "
        f"candidates measured in each of {rounds} rounds, a local fit and a farm fit alternating (one local node "
        f"declared `{TARGET}`, pinned to one core).",
        "",
        "| what | median (IQR) |",
        "|---|---|",
        f"| dispatch overhead per candidate, s (driver's round trip minus the node's time; {len(overheads)} tasks) "
        f"| {_q(overheads)} |",
        f"| p50 through the farm / p50 locally, per candidate | {_q(farm_vs_local)} |",
        f"| p50 locally / p50 locally one round earlier (the measurement's own noise) | {_q(local_vs_local)} |",
        "",
    ]
    # 2. scaling: the same fit over 2 nodes (one core each) vs 1 node (one core)
    address = _farm(home, 2)
    killed: list[int] = []
    try:
        two_node, cpu_share = [], []
        for _ in range(rounds):
            res, wall, cpu = _farm_fit(address, home, store, _settings())
            two_node.append(wall)
            cpu_share.append(cpu / wall)
        # 3. fault run: one node killed mid-fit (its in-flight candidate goes to the other)
        state = json.loads(state_path(home).read_text())
        done: list[str] = []

        def killer() -> None:
            while len(done) < 3:
                time.sleep(0.05)
            time.sleep(0.5)  # it took its next candidate; each warms up for 1.5 s: still busy
            victim = state["nodes"][1]["pid"]
            os.killpg(victim, signal.SIGKILL)
            killed.append(victim)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        res, wall, _ = _farm_fit(address, home, store, _settings(warmup_s=1.5), progress=done.append)
        thread.join(timeout=30)
        tr = res.targets[TARGET]
        measured = [r for r in tr.fit.candidates if r.source not in ("skipped",)]
        ids_measured = [r.candidate.id for r in measured]
    finally:
        down(home)
    med1, med2 = statistics.median(one_node), statistics.median(two_node)
    lines += [
        "| nodes (one core each) | fit wall time, s (median of "
        f"{rounds}) | speedup | driver CPU share (driver CPU s / wall s) |",
        "|---|---|---|---|",
        f"| 1 | {med1:.1f} | 1.00× | – |",
        f"| 2 | {med2:.1f} | {med1 / med2:.2f}× | {statistics.median(cpu_share):.2f} |",
        "",
        f"Fault run (2 nodes, one killed with SIGKILL mid-fit after {3} results): {len(measured)} candidates, "
        f"{len(set(ids_measured))} distinct (none measured twice), {sum(r.measurement.ok for r in measured)} ok, "
        f"{tr.lost} lost, {tr.redispatched} re-dispatched to the surviving node; node killed: {bool(killed)}; "
        f"wall {wall:.1f} s.",
        "",
    ]
    per_cand = med1 / max(len(ids), 1)
    over = statistics.median(overheads) if overheads else 0.0
    lines += [
        f"On paper, 20 targets × 100 candidates, one single-slot node per target: each target's 100 candidates run "
        f"one after another on its node, the targets in parallel — about 100 × {per_cand:.2f} s "
        f"(this run's fit time per candidate on one node, dispatch included) = {100 * per_cand / 60:.1f} min, "
        f"if the driver keeps up: it dispatches 2000 tasks at a median overhead of {over:.3f} s each, overlapping "
        "the nodes' measurements; with k nodes per target, about 1/k of that plus each stage's wait for its slowest "
        "candidate (the stages of a local fit: reference, variants, options, batches).",
        "",
    ]
    return lines


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(section(Path(tmp), rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
