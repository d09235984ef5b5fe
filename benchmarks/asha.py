"""ASHA at 10% of a budget against random search with full training at 100% (issue 6), on scikit-learn's
digits with the MLP family of `examples/explore` (hidden 8–256, 1–3 layers, lr, activation, weight decay),
up to 27 epochs. Both use Optuna's random sampler with the same seed, so they draw the same configurations in
the same order; ASHA (η=3, rungs 1/3/9/27 epochs) stops the laggards, random search trains each to 27
epochs. Repeated over seeds, run alternately (ASHA, random, ASHA, ...) so that machine drift hits both.
The metric is the best validation accuracy a run found (360 held-out digits).

    python benchmarks/asha.py --append BENCHMARKS.md      (also a section of `make bench`)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from commentary import asha_commentary  # noqa: E402

from chipfit.explore import explore, parse_budget  # noqa: E402
from chipfit.hardware.detect import cpu_quota  # noqa: E402

HEADER = "## Exploration: ASHA at 10% of the budget vs random search at 100% (issue 6)"


def _space(work: Path, sampler: str = "random") -> Path:
    text = (ROOT / "examples" / "explore" / "space.yaml").read_text()
    trainable = ROOT / "examples" / "explore" / "trainable.py"
    text = text.replace("trainable.py:", f"{trainable}:") + f"sampler: {sampler}\n"
    path = work / "space.yaml"
    path.write_text(text)
    return path


def one(work: Path, budget_s: float, seed: int, asha: bool, sampler: str = "random") -> dict:
    name = f"{'asha' if asha else 'full'}-{sampler}-{seed}"
    (work / name).mkdir(parents=True)
    space = _space(work / name, sampler)
    t0 = time.monotonic()
    r = explore(
        space,
        parse_budget(f"{budget_s:g}s"),
        store=f"sqlite:///{work / name / 'study.db'}",
        prune=asha,
        seed=seed,
        deliver=False,
    )
    s = r.to_dict()
    print(f"{name}: best {s['winner']['value'] if s['winner'] else None} trials {s['trials']}", file=sys.stderr)
    return {
        "best": s["winner"]["value"] if s["winner"] else 0.0,
        "trials": sum(s["trials"].values()),
        "complete": s["trials"].get("complete", 0),
        "wall": time.monotonic() - t0,
        "spent_usd": s["spent_usd"],
    }


def section(work: Path, budget_s: float, seeds: int) -> list[str]:
    rows, tpe = [], []
    for seed in range(seeds):  # alternating, so that drift on the machine hits all three
        a = one(work, budget_s * 0.1, seed, asha=True)
        tpe.append(one(work, budget_s * 0.1, seed, asha=True, sampler="tpe"))
        b = one(work, budget_s, seed, asha=False)
        rows.append((seed, a, b))
    if any(not a["complete"] or not b["complete"] for _, a, b in rows):
        raise SystemExit(f"a run completed no trial: {rows}")
    lines = [
        HEADER,
        "",
        f"Budget: random search {budget_s:g} s of wall time on this machine (one trial at a time, "
        f"{cpu_quota()} cores in the CPU quota), "
        f"ASHA {budget_s * 0.1:g} s. Best validation accuracy per run (Optuna random sampler, seed per row):",
        "",
        "| seed | ASHA @10%: best | trials (completed) | $ | random @100%: best | trials (completed) | $ "
        "| ASHA + TPE @10%: best | trials (completed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (seed, a, b), t in zip(rows, tpe, strict=True):
        lines.append(
            f"| {seed} | {a['best']:.4f} | {a['trials']} ({a['complete']}) | {a['spent_usd']:.5f} | "
            f"{b['best']:.4f} | {b['trials']} ({b['complete']}) | {b['spent_usd']:.5f} | "
            f"{t['best']:.4f} | {t['trials']} ({t['complete']}) |"
        )
    return [*lines, "", *asha_commentary(rows, tpe, _validation_size())]


def _validation_size() -> int:
    """How many held-out digits the trainable scores (its own split, not a copy of it)."""
    sys.path.insert(0, str(ROOT / "examples" / "explore"))
    import trainable

    return len(trainable.eval_data()["labels"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--append", help="Replace (or add) this section in the given markdown file.")
    ap.add_argument("--budget", type=float, default=240.0, help="random search's wall seconds (ASHA gets 10%%)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = section(Path(tmp), args.budget, args.seeds)
    from _md import emit

    emit(lines, HEADER, args.append)


if __name__ == "__main__":
    main()
