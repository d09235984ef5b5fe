"""Training rows from the store, and the predictor's honest evaluation: trained on some models' measurements,
scored on the others' (scikit-learn's ``GroupKFold`` over models), never on the rows it learned from."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from chipfit.hardware.catalog import Target
from chipfit.predict.model import Predictor

__all__ = ["model_folds", "predict_eval", "target_for_env", "training_rows"]


def target_for_env(env: Mapping[str, Any], local: Target, local_cpu: Mapping[str, Any]) -> Target:
    """The target a stored measurement was taken on: this machine's (with measured rates) when the CPU and
    quota match, else this machine's entry rescaled to the recorded core count."""
    cpu = env.get("cpu", {})
    if all(cpu.get(k) == local_cpu.get(k) for k in ("model", "arch", "isa", "cores_in_quota")):
        return local
    cores = int(cpu.get("cores_in_quota") or local.cores)
    scale = cores / float(local.cores)
    return replace(
        local,
        name=f"measured:{cpu.get('model', '?')}x{cores}",
        cores=cores,
        threads=cores,
        peak_gflops={k: v * scale for k, v in local.peak_gflops.items()},
    )


def training_rows(store: Any, local: Target | None = None) -> list[dict[str, Any]]:
    """Every ok measurement of a model whose graph the store knows, with the target it was measured on; farm
    nodes that only declared their target (``farm join --as``) are left out: they did not run on it."""
    from chipfit.hardware.detect import local_machine
    from chipfit.hardware.local import local_target

    local = local or local_target()[0]
    local_cpu = local_machine()["cpu"]
    models = store.models()
    out = []
    for row in store.ok_rows():
        info = models.get(row["model_hash"])
        if info is None or row["candidate"].get("target", "cpu") != "cpu":
            continue
        if ((row["env"] or {}).get("farm") or {}).get("declared"):
            continue  # measured on a farm node that only declared its target (--as): not that target's numbers
        target = target_for_env(row["env"] or {}, local, local_cpu)
        out.append({**row, "info": info, "target": target})
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (scipy: tied values share their average rank); None when undefined."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def _noise(metrics: Mapping[str, Any]) -> float | None:
    """A measurement's own noise: the half-width of its p50's 95% confidence interval, relative to the p50."""
    ci, p50 = metrics.get("p50_ci_ms"), metrics.get("p50_ms")
    if not ci or not p50 or len(ci) != 2:
        return None
    return float((ci[1] - ci[0]) / 2 / p50)


def model_folds(rows: Sequence[Mapping[str, Any]], folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of scikit-learn's ``GroupKFold`` grouped by model: every row of a model is in
    the test set of exactly one fold and in no fold's training set beside it. ``folds`` is capped at the number
    of models."""
    from sklearn.model_selection import GroupKFold

    groups = np.array([r["model_hash"] for r in rows])
    k = min(folds, len(set(groups.tolist())))
    return list(GroupKFold(n_splits=k).split(np.zeros((len(rows), 1)), groups=groups))


def predict_eval(
    rows: list[dict[str, Any]], folds: int = 5, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Grouped k-fold by model: ``n``, ``within_10pct`` (share of held-out predictions within ±10%),
    ``median_ape`` (median absolute percentage error, as a fraction), ``spearman`` (rank correlation), and the
    same per model, and ``noise_floor`` (the median relative half-width of the measured p50s' 95% confidence
    intervals: no predictor is scored better than the truth is known). ``progress(done, folds)`` is called after
    each fold."""
    groups = sorted({r["model_hash"] for r in rows})
    if len(groups) < 2:
        return {
            "n": 0,
            "models": len(groups),
            "within_10pct": None,
            "median_ape": None,
            "spearman": None,
            "note": "needs measurements of at least two models (held-out evaluation is by model); run fit on more",
        }
    splits = model_folds(rows, folds)
    pred = np.zeros(len(rows))
    for k, (train_idx, test_idx) in enumerate(splits, 1):
        model = Predictor().fit([rows[i] for i in train_idx])
        preds = model.predict_many([(rows[i]["info"], rows[i]["candidate"], rows[i]["target"]) for i in test_idx])
        pred[test_idx] = [p.p50_ms for p in preds]
        if progress is not None:
            progress(k, len(splits))
    actual = np.array([r["metrics"]["p50_ms"] for r in rows])
    ape = np.abs(pred - actual) / actual
    per_model = {}
    for g in groups:
        idx = [i for i, r in enumerate(rows) if r["model_hash"] == g]
        per_model[g[:12]] = {
            "n": len(idx),
            "within_10pct": float(np.mean(ape[idx] <= 0.10)),
            "median_ape": float(np.median(ape[idx])),
            "spearman": _spearman(pred[idx], actual[idx]),
        }
    noise = [v for v in (_noise(r["metrics"]) for r in rows) if v is not None]
    return {
        "n": len(rows),
        "models": len(groups),
        "folds": len(splits),
        "noise_floor": float(np.median(noise)) if noise else None,
        "within_10pct": float(np.mean(ape <= 0.10)),
        "median_ape": float(np.median(ape)),
        "spearman": _spearman(pred, actual),
        "per_model": per_model,
    }
