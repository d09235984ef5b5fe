"""The latency predictors on this machine.

Kernel level (issue 16): `chipfit predict calibrate` on this machine, then a corpus of models it never saw
(MLPs, CNNs, BERT-like encoders of varied width, depth and sequence length; fp32, int8 dynamic, fused and
fused+int8; batch 1-32; 1 and all threads): each configuration's ground truth is the median of 7 interleaved
repeats (their CV is the noise floor), its prediction the sum of its kernels' predictions. Also scored:
a per-model correction learned on the corpus itself, held out by model (grouped 5-fold).

Store level (issue 5): a corpus of small models (plus the bundled digits CNN) measured exhaustively by `fit`;
the store-trained predictor evaluated on held-out models (grouped k-fold); and, per model, how much of the
candidate space a predictor-ordered search measures before it reaches the measured best.

    python benchmarks/predictor.py --kernel --append BENCHMARKS.md [--calibrate-minutes 20] [--models 30]
    python benchmarks/predictor.py --append BENCHMARKS.md      (the store section; also a section of `make bench`)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from commentary import guided_goal, predictor_goal  # noqa: E402

import chipfit  # noqa: E402
from chipfit.predict import Predictor, predict_eval, training_rows  # noqa: E402
from chipfit.search.driver import MeasureSettings  # noqa: E402
from chipfit.search.space import SpaceOptions  # noqa: E402
from chipfit.store import Store  # noqa: E402
from chipfit.testing import corpus  # noqa: E402

HEADER = "## Latency predictor and predictor-guided search (issue 5)"
KERNEL_HEADER = "## Kernel-level latency predictor (issue 16)"


def _space() -> SpaceOptions:
    return SpaceOptions(
        backends=("onnxruntime", "openvino"),
        batch_sizes=(1, 8),
        threads=(1, 2),
        opt_levels=("none", "all"),
        execution_modes=("sequential",),
        passes=("int8_dynamic",),
    )


def measure_corpus(work: Path, n: int) -> Store:
    work.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{work / 'predictor.db'}")
    settings = MeasureSettings(probe=False, batch_sweep_top=100, option_sweep_top=100, predict=False)
    models = corpus.write(work / "corpus", n=n, samples=64)
    ex = ROOT / "examples" / "digits"
    models.append((ex / "model.onnx", ex / "eval.npz"))
    for i, (model, data) in enumerate(models):
        print(f"[{i + 1}/{len(models)}] measuring {model.name}", file=sys.stderr, flush=True)
        chipfit.fit(model, data, space=_space(), settings=settings, store=store, home=work / "home")
    return store


def guided_fraction(rows: list[dict], model_hash: str) -> tuple[int, int, str]:
    """Candidates a search in predicted order measures until it has measured the fastest batch-1 candidate
    (the predictor trained on the other models only), and the space's size."""
    mine = [r for r in rows if r["model_hash"] == model_hash and int(r["candidate"]["batch"]) == 1]
    predictor = Predictor().fit([r for r in rows if r["model_hash"] != model_hash])
    preds = predictor.predict_many([(r["info"], r["candidate"], r["target"]) for r in mine])
    order = sorted(range(len(mine)), key=lambda i: preds[i].p50_ms)
    best = min(range(len(mine)), key=lambda i: mine[i]["metrics"]["p50_ms"])
    c = mine[best]["candidate"]
    label = f"{c['backend']} {'+'.join(p['name'] for p in c['passes']) or 'original'} {c['options']}"
    return order.index(best) + 1, len(mine), label


def section(work: Path, n: int = 8) -> list[str]:
    store = measure_corpus(work, n)
    rows = training_rows(store)
    report = predict_eval(rows, folds=5)
    lines = [
        HEADER,
        "",
        f"{report['n']} measurements (ONNX Runtime and OpenVINO; options, int8, batch 1/8) of {report['models']} "
        "models: the corpus of `chipfit.testing.corpus` (MLPs, CNNs, transformer blocks) and the digits CNN. "
        f"Grouped {report['folds']}-fold by model: every prediction is for a model the predictor never saw.",
        "",
        "| model | n | within ±10% | median abs. error | Spearman |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["per_model"].items():
        rho = "n/a" if m["spearman"] is None else format(m["spearman"], ".3f")
        lines.append(f"| {name} | {m['n']} | {m['within_10pct']:.0%} | {m['median_ape']:.1%} | {rho} |")
    lines += [
        f"| **all** | {report['n']} | **{report['within_10pct']:.0%}** | **{report['median_ape']:.1%}** | "
        f"**{'n/a' if report['spearman'] is None else format(report['spearman'], '.3f')}** |",
        "",
        predictor_goal(report["within_10pct"], report["spearman"]),
        "",
        "Predictor-guided search vs exhaustive search, batch-1 candidates of each model (predictor trained on "
        "the other models): the number measured, in predicted order, until the measured fastest is reached.",
        "",
        "| model | measured until best (guided) | exhaustive | share | measured best |",
        "|---|---|---|---|---|",
    ]
    shares = []
    for g in sorted({r["model_hash"] for r in rows}):
        k, total, label = guided_fraction(rows, g)
        shares.append(k / total)
        lines.append(f"| {g[:12]} | {k} | {total} | {k / total:.0%} | `{label}` |")
    return [*lines, "", guided_goal(shares), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--append", help="Replace (or add) this section in the given markdown file.")
    ap.add_argument("--models", type=int, default=None, help="Corpus size (store: 8; kernel: 30).")
    ap.add_argument("--kernel", action="store_true", help="The kernel-level section (issue 16).")
    ap.add_argument("--calibrate-minutes", type=float, default=20.0)
    ap.add_argument("--home", help="A chipfit home whose calibration to use (default: calibrate a fresh one).")
    ap.add_argument("--json", help="Also write the per-configuration rows to this JSON file.")
    ap.add_argument(
        "--time-to-answer", action="store_true", help="With --kernel: also fit a 6-layer encoder without/with it."
    )
    args = ap.parse_args()
    from _md import emit

    if args.kernel:
        from predictor_kernels import kernel_section

        lines = kernel_section(args.models or 30, args.calibrate_minutes, args.home, args.json)
        if args.time_to_answer and args.home:
            from predictor_kernels import time_to_answer

            lines += ["`chipfit fit --min-fidelity 0.99`, BERT-like encoder (6 x 384, seq 128), batch 1:", ""]
            lines += [*time_to_answer(args.home), ""]
        emit(lines, KERNEL_HEADER, args.append)
        return
    with tempfile.TemporaryDirectory() as tmp:
        lines = section(Path(tmp), args.models or 8)
    emit(lines, HEADER, args.append)


if __name__ == "__main__":
    main()
