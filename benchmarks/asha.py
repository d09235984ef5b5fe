"""Budgeted exploration judged by held-out test accuracy (issues 6 and 16): ASHA at 10% of a budget against
random search with full training at 100%, on scikit-learn's digits with the MLP family of `examples/explore`
(hidden 8–256, 1–3 layers, lr, activation, weight decay), up to 27 epochs.

Each run is judged by the **test accuracy of the configuration it picks** (its best validation score among
the configurations it trained to the end): the picked trial's last checkpoint is scored on the trainable's
test split, which no trial ever scores. The best validation score itself is shown too, but it favours the run
that scores more configurations (the maximum of more noisy draws).

The budget is in resource units (epochs, `--budget 3240units`), not wall time: a run on this shared machine
then trains the same epochs whatever else runs, and a trial's start-up (a process, the study's load) is not
charged. Random search trains every configuration to 27 epochs; ASHA (Optuna's SuccessiveHalvingPruner,
η=3, rungs 1/3/9/27) stops the laggards; Hyperband (Optuna's HyperbandPruner) runs several such brackets.
Optuna's random sampler with the same seed draws the same configurations in the same order for ASHA and
random search; TPE is Optuna's TPE sampler. A budget in wall time (`--budget 240s`) still works.

    python benchmarks/asha.py --append BENCHMARKS.md [--seeds 5] [--jobs 2]  (also `run.py --only asha`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from commentary import asha_commentary  # noqa: E402

from chipfit.explore import explore, parse_budget  # noqa: E402
from chipfit.hardware.detect import cpu_quota  # noqa: E402

HEADER = "## Exploration: ASHA at 10% of the budget vs random search at 100%, judged on a test split (issues 6, 16)"
DEFAULT_BUDGET = "3240units"  # 120 full trials: what random search completed in the former 240 s on an idle machine
# (label, pruner or None for full training, sampler, share of the budget); the first is the reference
ARMS: tuple[tuple[str, str | None, str, float], ...] = (
    ("random @100%", None, "random", 1.0),
    ("ASHA @10%", "asha", "random", 0.1),
    ("ASHA + TPE @10%", "asha", "tpe", 0.1),
    ("Hyperband @10%", "hyperband", "random", 0.1),
)


def _trainable() -> Any:
    sys.path.insert(0, str(ROOT / "examples" / "explore"))
    import trainable

    return trainable


def _space(work: Path, sampler: str, pruner: str) -> Path:
    text = (ROOT / "examples" / "explore" / "space.yaml").read_text()
    trainable = ROOT / "examples" / "explore" / "trainable.py"
    text = text.replace("trainable.py:", f"{trainable}:") + f"sampler: {sampler}\npruner: {pruner}\n"
    path = work / "space.yaml"
    path.write_text(text)
    return path


def score_on_test(checkpoint: str, params: dict[str, Any]) -> float:
    """The test-split accuracy of a trained trial, from its last checkpoint."""
    import torch

    t = _trainable()
    net = t.model(params)
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    net.eval()
    test = t.test_data()
    with torch.no_grad():
        pred = net(torch.from_numpy(test["x"])).argmax(1).numpy()
    return float((pred == test["labels"]).mean())


def one(
    work: Path, budget: str, seed: int, pruner: str | None, sampler: str, share: float, cpu: int | None = None
) -> dict[str, Any]:
    """One run (an explore study of its own, checkpoints under ``work``), judged on the test split; ``cpu``:
    the core it (and its trials) may use."""
    os.environ["CHIPFIT_HOME"] = str(work / "home")
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    b = parse_budget(budget)
    amount = b.amount * share
    name = f"{pruner or 'full'}-{sampler}-{seed}"
    (work / name).mkdir(parents=True)
    space = _space(work / name, sampler, pruner or "asha")
    t0 = time.monotonic()
    r = explore(
        space,
        parse_budget(f"{amount:g}{'units' if b.unit == 'units' else 's'}"),
        store=f"sqlite:///{work / name / 'study.db'}",
        prune=pruner is not None,
        seed=seed,
        deliver=False,
    )
    s = r.to_dict()
    w = s["winner"]
    test = score_on_test(w["checkpoint"], w["params"]) if w else 0.0
    print(f"{name}: val {w['value'] if w else None} test {test:.4f} trials {s['trials']}", file=sys.stderr)
    return {
        "best": w["value"] if w else 0.0,
        "test": test,
        "trials": sum(s["trials"].values()),
        "complete": s["trials"].get("complete", 0),
        "spent": s["spent"],
        "wall": time.monotonic() - t0,
    }


def section(
    work: Path,
    budget: str = DEFAULT_BUDGET,
    seeds: int = 5,
    jobs: int = 1,
    log: Path | None = None,
    arms: list[str] | None = None,
) -> list[str]:
    """Every arm on every seed, each run in its own process pinned to one core (``jobs`` at a time: with a
    budget in units, parallel runs train the same epochs); returns the markdown section. ``log``: each run's
    result is appended there as it ends (JSON lines; ``--from-log`` writes the table from them)."""
    chosen = [a for a in ARMS if arms is None or a[0] in arms]
    tasks = [(seed, arm) for arm in chosen for seed in range(seeds)]  # the longest (random search) first
    cpus = sorted(os.sched_getaffinity(0))
    free = list(cpus) * max(1, -(-jobs // len(cpus)))  # one core per run (its trials then use one thread)
    lock = threading.Lock()

    def run(task: tuple[int, tuple[str, str | None, str, float]]) -> dict[str, Any]:
        seed, (label, pruner, sampler, share) = task
        with lock:
            cpu = free.pop(0)
        try:
            args = [str(work), budget, seed, pruner, sampler, share, cpu]
            cmd = [sys.executable, __file__, "--one", json.dumps(args)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        finally:
            with lock:
                free.append(cpu)
        sys.stderr.write(done.stderr[-2000:])
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
        result = {"arm": label, "seed": seed, **json.loads(done.stdout.strip().splitlines()[-1])}
        if log is not None:
            with lock, log.open("a") as f:
                f.write(json.dumps(result) + "\n")
        return result

    t0 = time.monotonic()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(run, tasks))
    wall = time.monotonic() - t0
    runs: dict[str, list[dict[str, Any]]] = {arm[0]: [] for arm in chosen}
    for (_, arm), r in zip(tasks, results, strict=True):
        runs[arm[0]].append(r)
    if any(not r["complete"] for rs in runs.values() for r in rs):
        raise SystemExit(f"a run completed no trial: {runs}")
    return table(runs, budget, seeds, wall, jobs)


def table(
    runs: dict[str, list[dict[str, Any]]],
    budget: str,
    seeds: int,
    wall: float,
    jobs: int,
    seed_ids: list[int] | None = None,
) -> list[str]:
    """``jobs`` 0: ``wall`` is the runs' summed wall time (a table from a log)."""
    b = parse_budget(budget)
    unit = "epochs" if b.unit == "units" else "s of wall time"
    labels = list(runs)
    lines = [
        HEADER,
        "",
        f"Budget: random search {b.amount:g} {unit}, the other arms 10% of it ({b.amount * 0.1:g} {unit})"
        + (
            ""
            if budget == DEFAULT_BUDGET
            else f" (`--budget {budget}`; the default, {DEFAULT_BUDGET}, is about what the former 240 s of wall time "
            "bought on an idle machine: 115 configurations trained to 27 epochs)"
        )
        + "; "
        f"trials one at a time, each run on one core ({cpu_quota()} in the CPU quota; "
        + (
            f"{jobs} run{'s' if jobs != 1 else ''} at a time, {wall / 60:.0f} min"
            if jobs
            else f"{wall / 60:.0f} min of runs in all"
        )
        + "; the machine was shared with other work, which a budget in epochs does not feel). Per seed: the **test "
        "accuracy of the configuration the run picked** (360 digits no trial scores), then its best validation "
        "accuracy and the trials it started (trained to the end).",
        "",
        "| seed | " + " | ".join(f"{k}: test (val) | trials" for k in labels) + " |",
        "|---" * (1 + 2 * len(labels)) + "|",
    ]
    for i, seed in enumerate(seed_ids if seed_ids is not None else range(seeds)):
        cells = []
        for k in labels:
            r = runs[k][i]
            cells += [f"**{r['test']:.4f}** ({r['best']:.4f})", f"{r['trials']} ({r['complete']})"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    med = [
        f"**{statistics.median(r['test'] for r in runs[k]):.4f}** ({statistics.median(r['best'] for r in runs[k]):.4f})"
        for k in labels
    ]
    trials = [statistics.median(r["trials"] for r in runs[k]) for k in labels]
    lines.append("| median | " + " | ".join(f"{m} | {n:g}" for m, n in zip(med, trials, strict=True)) + " |")
    return [*lines, "", *asha_commentary(runs, _trainable().test_data()["labels"].size)]


def from_log(path: Path, budget: str) -> list[str]:
    """The table from a ``--log`` file: the seeds every arm finished (wall time: the log's first to last run)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[tuple[str, int], dict[str, Any]] = {}
    repeats = []  # (arm, seed) run twice: how far apart the two picks' test accuracies are
    for r in rows:  # the first run of an (arm, seed) is the table's
        key = (r["arm"], r["seed"])
        if key in by:
            repeats.append(abs(r["test"] - by[key]["test"]))
        else:
            by[key] = r
    seeds = sorted(s for s in {r["seed"] for r in rows} if all((a[0], s) in by for a in ARMS))
    if not seeds:
        raise SystemExit(f"{path}: no seed has a result for every arm ({', '.join(a[0] for a in ARMS)}).")
    runs = {a[0]: [by[(a[0], s)] for s in seeds] for a in ARMS}
    lines = table(runs, budget, len(seeds), sum(r["wall"] for r in rows), 0, seeds)
    if repeats:
        lines += [
            f"Reproducibility: {len(repeats)} (arm, seed) runs were repeated; their picks' test accuracies differ by "
            f"up to {max(repeats):.4f} (median {statistics.median(repeats):.4f}) between the two runs, as much as "
            "the arms differ: a seeded run is not repeatable (a trial's define-by-run suggestion, the trainable's "
            "weight decay, is drawn in the trial's process by a sampler that is not seeded).",
            "",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--append", help="Replace (or add) this section in the given markdown file.")
    ap.add_argument("--budget", default=DEFAULT_BUDGET, help="random search's budget (the others get 10%%)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (a budget in units is not skewed by it)")
    ap.add_argument("--log", help="append each run's result to this JSON-lines file as it ends")
    ap.add_argument("--arms", help=f"comma-separated arms to run (default all: {', '.join(a[0] for a in ARMS)})")
    ap.add_argument("--from-log", help="write the table from a --log file (its complete seeds) instead of running")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a single run, as JSON arguments of one(): prints its result
    args = ap.parse_args(argv)
    if args.one:
        work, budget, seed, pruner, sampler, share, cpu = json.loads(args.one)
        print(json.dumps(one(Path(work), budget, seed, pruner, sampler, share, cpu)))
        return
    if args.from_log:
        lines = from_log(Path(args.from_log), args.budget)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(args.log) if args.log else None
            arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
            lines = section(Path(tmp), args.budget, args.seeds, args.jobs, log, arms)
    from _md import emit

    emit(lines, HEADER, args.append)


if __name__ == "__main__":
    main()
