"""Quality: accuracy against labels (topK, MSE, F1) and fidelity against the original model's outputs.

Fidelity is a higher-is-better score with 1 = identical outputs: the mean per-sample cosine similarity of
all outputs (default), the argmax agreement of the first output, or 1 - the max relative error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "default_metric", "fidelity", "higher_is_better"]


def default_metric(labels: np.ndarray, first_output_shape: tuple[int, ...]) -> str:
    """top1 for integer labels against class scores, MSE otherwise."""
    if labels.dtype.kind in "iub" and len(first_output_shape) >= 2 and first_output_shape[-1] not in (1, None):
        return "top1"
    return "mse"


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
