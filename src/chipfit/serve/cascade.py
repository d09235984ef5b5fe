"""``chipfit cascade FAST ACCURATE --data eval.npz --max-accuracy-drop 0.01 --out DIR`` (IDK cascades): on the
evaluation data, every threshold on the fast model's confidence (its max class probability) is tried; rows
at or above it are answered by the fast model, the rest go on to the accurate one. The threshold kept is
the one with the lowest expected latency per query (the fast model's batch-1 p50 plus the share deferred
times the accurate model's, both from their manifests) whose accuracy is within the bound of the accurate
model's. The result is an artifact folder (both models copied in, ``manifest.json`` of kind "cascade") that
``chipfit serve`` serves as one endpoint."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.errors import DataError, SpecError

__all__ = ["CascadeResult", "build_cascade"]


@dataclass
class CascadeResult:
    threshold: float
    fast_share: float
    accuracy: float
    accuracy_fast: float
    accuracy_accurate: float
    expected_ms: float
    fast_ms: float
    accurate_ms: float
    out: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _p50_b1(manifest: dict[str, Any]) -> float:
    prof = sorted(manifest.get("batch_profile") or [], key=lambda p: p["batch"])
    if prof:
        return float(prof[0]["p50_ms"]) / int(prof[0]["batch"]) if prof[0]["batch"] != 1 else float(prof[0]["p50_ms"])
    return float((manifest.get("measurements") or {}).get("p50_ms") or 0.0)


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


def build_cascade(
    fast_dir: Path, accurate_dir: Path, data: Any, max_accuracy_drop: float, out: Path | None
) -> CascadeResult:
    from chipfit.data import load_data
    from chipfit.package import check_writable, load
    from chipfit.serve.registry import confidence

    if not (0 <= max_accuracy_drop < 1):
        raise SpecError(f"--max-accuracy-drop must be in [0, 1), got {max_accuracy_drop}.")
    out_dir = check_writable(out) if out is not None else None
    fast, accurate = load(fast_dir), load(accurate_dir)
    sig_f, sig_a = _signature(fast.manifest), _signature(accurate.manifest)
    if sig_f != sig_a:
        raise SpecError(
            f"the two models differ in signature: fast takes {sig_f[0]} -> {sig_f[1]}, accurate {sig_a[0]} -> "
            f"{sig_a[1]}. A cascade needs the same inputs (names, dtypes, shapes) and outputs."
        )
    ds = load_data(data)
    if ds.labels is None:
        raise DataError(f"--data {data}: a cascade is chosen on labelled data; add a 'labels' array.")
    missing = [n for n in fast.input_names if n not in ds.inputs]
    if missing:
        raise DataError(f"--data {data}: lacks the model's inputs {missing}; it has {sorted(ds.inputs)}.")
    feeds = {n: ds.inputs[n] for n in fast.input_names}
    of, oa = _outputs(fast, feeds), _outputs(accurate, feeds)
    labels = np.asarray(ds.labels).reshape(-1)
    right_f = of.reshape(len(of), -1).argmax(1) == labels
    right_a = oa.reshape(len(oa), -1).argmax(1) == labels
    conf = confidence(of)
    tf, ta = _p50_b1(fast.manifest), _p50_b1(accurate.manifest)
    acc_a = float(right_a.mean())
    best = None
    for t in np.unique(np.concatenate([conf, [np.inf]])):  # inf: everything deferred (the accurate model alone)
        keep = conf >= t
        acc = float(np.where(keep, right_f, right_a).mean())
        share = float(keep.mean())
        cost = tf + (1 - share) * ta
        if acc >= acc_a - max_accuracy_drop - 1e-12 and (best is None or cost < best[0] - 1e-12):
            best = (cost, float(t), share, acc)
    assert best is not None  # t = inf is always within the bound
    cost, t, share, acc = best
    result = CascadeResult(t, share, acc, float(right_f.mean()), acc_a, cost, tf, ta, out_dir)
    fast.close()
    accurate.close()
    if out_dir is not None:
        _write(out_dir, fast_dir, accurate_dir, result, fast.output_names[0], max_accuracy_drop, len(labels))
    return result


def _write(out: Path, fast_dir: Path, accurate_dir: Path, r: CascadeResult, output: str, drop: float, n: int) -> None:
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
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
        "evaluation": {**r.to_dict(), "rows": n, "out": None},
        "fast_share": r.fast_share,
        "feasible": True,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
