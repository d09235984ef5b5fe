"""Quality: accuracy against labels (topK, MSE, F1) and fidelity against the original model's outputs.

Fidelity is a higher-is-better score with 1 = identical outputs: the mean per-sample cosine similarity of
all outputs (default), the argmax agreement of the first output, or 1 - the max relative error.
"""

from __future__ import annotations

import math

import numpy as np

from chipfit.errors import DataError

__all__ = ["accuracy", "check_labels", "default_metric", "fidelity", "higher_is_better"]


def default_metric(labels: np.ndarray, first_output_shape: tuple[int, ...]) -> str:
    """top1 for integer labels against class scores, MSE otherwise."""
    if labels.dtype.kind in "iub" and len(first_output_shape) >= 2 and first_output_shape[-1] not in (1, None):
        return "top1"
    return "mse"


def check_labels(labels: np.ndarray, metric: str, output_shape: tuple[int | None, ...], source: str) -> None:
    """Refuse labels that ``metric`` cannot score against the model's first output (shape, batch axis first,
    unknown dimensions None) before anything is measured: class ids for topK and F1, numbers for MSE."""
    where = f"'labels' in {source}"
    if labels.dtype.kind not in "biuf":
        raise DataError(
            f"{where} has dtype {labels.dtype}, not numbers; labels are integer class ids (top1, topK, f1) or "
            "numeric targets (mse). Map class names to ids before saving: "
            "np.unique(labels, return_inverse=True)[1]."
        )
    if metric == "mse":
        per_sample = math.prod(labels.shape[1:])
        out = output_shape[1:]
        if all(isinstance(d, int) for d in out) and math.prod(d for d in out if d is not None) != per_sample:
            raise DataError(
                f"{where} has shape {labels.shape} ({per_sample} value(s) per sample) but the model's first "
                f"output has {list(out)} per sample; for mse give labels of the output's shape."
            )
        return
    if labels.ndim != 1:
        hint = " If they are one-hot or scores, save labels.argmax(axis=1)." if labels.ndim == 2 else ""
        raise DataError(
            f"{where} has shape {labels.shape}; metric {metric} needs one integer class id per sample "
            f"(shape ({len(labels)},)).{hint}"
        )
    if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
        raise DataError(
            f"{where} holds non-integer values (dtype {labels.dtype}); metric {metric} needs integer class ids. "
            "For regression targets pass --metric mse."
        )
    classes = output_shape[-1] if len(output_shape) >= 2 else None
    if isinstance(classes, int):
        classes = max(classes, 2)  # one score column: binary, thresholded at 0.5
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            raise DataError(
                f"{where} has class ids outside 0..{classes - 1} (the model's first output has {classes} "
                f"classes), e.g. {labels[bad][:3].tolist()}. Check the label encoding."
            )


def higher_is_better(metric: str) -> bool:
    return metric != "mse"


def accuracy(output: np.ndarray, labels: np.ndarray, metric: str) -> float:
    if metric == "mse":
        return float(np.mean((output.reshape(labels.shape).astype(np.float64) - labels) ** 2))
    if metric.startswith("top"):
        k = int(metric[3:])
        scores = output.reshape(len(output), -1)
        if k == 1:
            return float(np.mean(scores.argmax(axis=1) == labels.reshape(-1)))
        topk = np.argpartition(-scores, kth=min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        return float(np.mean((topk == labels.reshape(-1, 1)).any(axis=1)))
    if metric == "f1":
        pred = output.reshape(len(output), -1)
        pred = pred.argmax(axis=1) if pred.shape[1] > 1 else (pred[:, 0] > 0.5).astype(int)
        truth = labels.reshape(-1)
        classes = np.unique(np.concatenate([truth, pred]))
        f1s = []
        for c in classes:
            tp = np.sum((pred == c) & (truth == c))
            denom = np.sum(pred == c) + np.sum(truth == c)
            f1s.append(2 * tp / denom if denom else 0.0)
        return float(np.mean(f1s))  # macro F1
    raise ValueError(f"unknown accuracy metric {metric!r}")


def fidelity(outputs: list[np.ndarray], reference: list[np.ndarray], metric: str) -> float:
    if metric == "agreement":
        a, b = outputs[0].reshape(len(outputs[0]), -1), reference[0].reshape(len(reference[0]), -1)
        return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    if metric == "cosine":
        n = len(outputs[0])
        a = np.concatenate([o.reshape(n, -1).astype(np.float64) for o in outputs], axis=1)
        b = np.concatenate([r.reshape(n, -1).astype(np.float64) for r in reference], axis=1)
        dot = np.sum(a * b, axis=1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        same = np.all(a == b, axis=1)
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), same.astype(np.float64))
        return float(np.mean(cos))
    if metric == "max_rel_error":
        worst = 0.0
        for o, r in zip(outputs, reference, strict=True):
            r64 = r.astype(np.float64)
            scale = max(float(np.max(np.abs(r64))), 1e-12)
            worst = max(worst, float(np.max(np.abs(o.astype(np.float64) - r64))) / scale)
        return 1.0 - worst
    raise ValueError(f"unknown fidelity metric {metric!r}")
