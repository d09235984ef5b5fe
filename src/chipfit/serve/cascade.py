"""``chipfit cascade FAST ACCURATE --data eval.npz --max-accuracy-drop 0.01 --out DIR`` (IDK cascades).

The labelled evaluation data is split in two by a seeded shuffle. On the first part (the *pick* split) every
threshold on the fast model's confidence (its max class probability) is tried; rows at or above it are
answered by the fast model, the rest go on to the accurate one. The threshold kept is the one with the lowest
expected latency per query (the fast model's batch-1 p50 plus the share deferred times the accurate model's,
both from their manifests) whose accuracy is within the bound of the accurate model's. Everything reported
(accuracy, fast share, expected latency, whether the bound held) is measured on the *other* part, which the
choice never saw, so the numbers are not flattered by the choice. The result is an artifact folder (both
models copied in, ``manifest.json`` of kind "cascade") that ``chipfit serve`` serves as one endpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.errors import ArtifactError, DataError, SpecError
from chipfit.fsutil import atomic_dir

__all__ = ["MIN_SPLIT_ROWS", "CascadeResult", "batch1_latency", "build_cascade", "split_rows"]

MIN_SPLIT_ROWS = 10  # rows in each of the pick and held-out splits, at least


@dataclass
class CascadeResult:
    """The chosen threshold and, measured on the held-out split, what the cascade achieves."""

    threshold: float
    fast_share: float  # held-out rows the fast model answers
    accuracy: float  # held-out accuracy of the cascade
    accuracy_fast: float  # held-out accuracy of the fast model alone
    accuracy_accurate: float  # held-out accuracy of the accurate model alone
    expected_ms: float  # fast_ms + (1 - fast_share) * accurate_ms
    fast_ms: float
    accurate_ms: float
    out: Path | None
    within_bound: bool = True  # held-out accuracy within max_accuracy_drop of the accurate model's
    rows_picked: int = 0
    rows_held_out: int = 0
    latency_basis: dict[str, str] = field(default_factory=dict)

    @property
    def evaluated_on(self) -> str:
        return f"held-out split of {self.rows_held_out} rows; the threshold was picked on the other {self.rows_picked}"

    def to_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return {**d, "evaluated_on": self.evaluated_on}

    def summary(self) -> str:
        """For the console: one finished sentence a line (no clause left hanging on a separator, however the
        terminal wraps)."""
        lines = [
            f"Threshold {self.threshold:.4g}, picked on {self.rows_picked} rows.",
            f"On the other {self.rows_held_out} (held-out) rows the fast model answers {self.fast_share:.1%} of "
            f"queries, with accuracy {self.accuracy:.4f} (fast alone {self.accuracy_fast:.4f}, accurate alone "
            f"{self.accuracy_accurate:.4f})"
            + ("." if self.within_bound else ": OUTSIDE the accuracy bound on these rows."),
            f"Expected latency {self.expected_ms:.4g} ms per query, "
            f"vs {self.accurate_ms:.4g} ms for the accurate model.",
        ]
        lines += [
            f"{role.capitalize()} model's latency: {_basis(text, role)}." for role, text in self.latency_basis.items()
        ]
        if self.out:
            lines.append(f"Written to {self.out}.")
        return "\n".join(lines)


def _basis(text: str, role: str) -> str:
    """``latency_basis`` values are prefixed with their role ("fast: ...")."""
    return text.removeprefix(f"{role}: ").rstrip(" ;.")


def batch1_latency(manifest: dict[str, Any]) -> tuple[float, str]:
    """The p50 of one batch-1 call, with where it comes from. Without a batch-1 measurement, the p50 of one
    call at the smallest measured batch is used and the basis says so (a batch-k p50 divided by k would be
    per-row throughput, not the latency one query sees)."""
    prof = sorted(manifest.get("batch_profile") or [], key=lambda p: int(p["batch"]))
    prof = [p for p in prof if p.get("p50_ms")]
    if prof and int(prof[0]["batch"]) == 1:
        return float(prof[0]["p50_ms"]), "batch-1 p50 measured"
    measured = manifest.get("measurements") or {}
    batch = int((manifest.get("candidate") or {}).get("batch") or 0)
    if batch == 1 and measured.get("p50_ms"):
        return float(measured["p50_ms"]), "batch-1 p50 measured"
    if prof:
        k = int(prof[0]["batch"])
        return float(prof[0]["p50_ms"]), f"no batch-1 measurement: p50 of one batch-{k} call used instead"
    if measured.get("p50_ms") and batch:
        return float(measured["p50_ms"]), f"no batch-1 measurement: p50 of one batch-{batch} call used instead"
    raise ArtifactError(
        "the artifact records no latency measurement, and a cascade's threshold is chosen by latency. "
        "Pass artifacts written by `chipfit fit` (a cross-compiled one has not been measured)."
    )


def split_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pick, held_out) row indices: a seeded shuffle of ``range(n)`` cut in half (pick gets the odd row)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = (n + 1) // 2
    return np.sort(order[:cut]), np.sort(order[cut:])


def _signature(manifest: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    src = manifest["model"]["source"]
    return (
        [(i["name"], i["dtype"], i["shape"][1:]) for i in src["inputs"]],
        [(o["name"], o["shape"][1:]) for o in src["outputs"]],
    )


def _outputs(loaded: Any, data: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    n = len(next(iter(data.values())))
    parts = [loaded.run({k: v[i : i + batch] for k, v in data.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(parts)


def _pick_threshold(
    conf: np.ndarray, right_f: np.ndarray, right_a: np.ndarray, tf: float, ta: float, drop: float
) -> float:
    """The threshold with the lowest expected latency whose accuracy is within ``drop`` of the accurate
    model's, on the rows given. ``inf`` (defer everything: the accurate model alone) always qualifies."""
    acc_a = float(right_a.mean())
    best_t, best_cost = float("inf"), tf + ta
    for t in np.unique(conf):
        keep = conf >= t
        acc = float(np.where(keep, right_f, right_a).mean())
        cost = tf + (1 - float(keep.mean())) * ta
        if acc >= acc_a - drop - 1e-12 and cost < best_cost - 1e-12:
            best_t, best_cost = float(t), cost
    return best_t


def build_cascade(
    fast_dir: Path, accurate_dir: Path, data: Any, max_accuracy_drop: float, out: Path | None, seed: int = 0
) -> CascadeResult:
    from chipfit.data import load_data
    from chipfit.package import check_writable, load
    from chipfit.serve.registry import confidence

    if not (0 <= max_accuracy_drop < 1):
        raise SpecError(f"--max-accuracy-drop must be in [0, 1), got {max_accuracy_drop}.")
    out_dir = check_writable(out) if out is not None else None
    fast, accurate = load(fast_dir), load(accurate_dir)
    try:
        sig_f, sig_a = _signature(fast.manifest), _signature(accurate.manifest)
        if sig_f != sig_a:
            raise SpecError(
                f"the two models differ in signature: fast takes {sig_f[0]} -> {sig_f[1]}, accurate {sig_a[0]} "
                f"-> {sig_a[1]}. A cascade needs the same inputs (names, dtypes, shapes) and outputs."
            )
        ds = load_data(data)
        if ds.labels is None:
            raise DataError(f"--data {data}: a cascade is chosen on labelled data; add a 'labels' array.")
        missing = [n for n in fast.input_names if n not in ds.inputs]
        if missing:
            raise DataError(f"--data {data}: lacks the model's inputs {missing}; it has {sorted(ds.inputs)}.")
        labels = np.asarray(ds.labels).reshape(-1)
        if len(labels) < 2 * MIN_SPLIT_ROWS:
            raise DataError(
                f"--data {data}: has {len(labels)} labelled rows; a cascade needs at least {2 * MIN_SPLIT_ROWS} "
                "(half to pick the threshold, half held out to report what it achieves)."
            )
        (tf, basis_f), (ta, basis_a) = batch1_latency(fast.manifest), batch1_latency(accurate.manifest)
        feeds = {n: ds.inputs[n] for n in fast.input_names}
        of, oa = _outputs(fast, feeds), _outputs(accurate, feeds)
        output_name = fast.output_names[0]
    finally:
        fast.close()
        accurate.close()
    right_f = of.reshape(len(of), -1).argmax(1) == labels
    right_a = oa.reshape(len(oa), -1).argmax(1) == labels
    conf = confidence(of)
    pick, held = split_rows(len(labels), seed)
    t = _pick_threshold(conf[pick], right_f[pick], right_a[pick], tf, ta, max_accuracy_drop)
    keep = conf[held] >= t
    share = float(keep.mean())
    acc = float(np.where(keep, right_f[held], right_a[held]).mean())
    acc_a = float(right_a[held].mean())
    result = CascadeResult(
        threshold=t,
        fast_share=share,
        accuracy=acc,
        accuracy_fast=float(right_f[held].mean()),
        accuracy_accurate=acc_a,
        expected_ms=tf + (1 - share) * ta,
        fast_ms=tf,
        accurate_ms=ta,
        out=out_dir,
        within_bound=acc >= acc_a - max_accuracy_drop - 1e-12,
        rows_picked=len(pick),
        rows_held_out=len(held),
        latency_basis={"fast": f"fast: {basis_f}", "accurate": f"accurate: {basis_a}"},
    )
    if out_dir is not None:
        _write(out_dir, fast_dir, accurate_dir, result, output_name, max_accuracy_drop)
    return result


def _write(out: Path, fast_dir: Path, accurate_dir: Path, r: CascadeResult, output: str, drop: float) -> None:
    import shutil

    with atomic_dir(out) as stage:  # an interrupted write keeps the cascade that was there
        shutil.copytree(fast_dir, stage / "fast")
        shutil.copytree(accurate_dir, stage / "accurate")
        manifest = {
            "format": 1,
            "kind": "cascade",
            "fast": "fast",
            "accurate": "accurate",
            "output": output,
            "confidence": "max class probability (softmax of logits)",
            "threshold": r.threshold if np.isfinite(r.threshold) else 1e300,
            "max_accuracy_drop": drop,
            "evaluation": {**r.to_dict(), "out": None},
            "fast_share": r.fast_share,
            "feasible": True,
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
