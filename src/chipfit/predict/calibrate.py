"""``chipfit predict calibrate``: collect the kernel micro-benchmarks on this machine within a time limit,
with adaptive sampling, and cache them per machine fingerprint (CPU model, ISA, cores in the quota, ONNX
Runtime and chipfit versions) under ``$CHIPFIT_HOME/predict/``. The cache holds the measurements only (JSON,
no pickles); the predictor is trained from them when loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.predict.kernel_predictor import KernelPredictor
from chipfit.predict.kernels import Kernel
from chipfit.predict.microbench import Seed, initial_seeds, measure_seed, neighbours, seed_from

__all__ = [
    "FORMAT",
    "calibrate",
    "calibration_path",
    "heldout_error",
    "load_calibration",
    "machine_fingerprint",
    "summary",
    "train",
]

FORMAT = 3  # bump when what a calibration holds changes: older files are then measured again


def machine_fingerprint() -> dict[str, Any]:
    """What the kernels' timings depend on: the CPU, the cores this process may use, the runtime's version."""
    from chipfit.backends.onnxruntime import backend
    from chipfit.hardware.detect import cpu_quota, local_machine

    cpu = local_machine()["cpu"]
    return {
        "cpu": {k: cpu.get(k) for k in ("model", "arch", "isa")},
        "cores": cpu_quota(),
        "onnxruntime": backend.version(),
        "format": FORMAT,
    }


def calibration_path(home: Path | None = None, fingerprint: dict[str, Any] | None = None) -> Path:
    from chipfit.workspace import subdir

    fp = fingerprint or machine_fingerprint()
    key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return subdir("predict", home) / f"calibration-{key}.json"


def load_calibration(home: Path | None = None) -> dict[str, Any] | None:
    """This machine's cached calibration, or None when it was never calibrated (or the file is unreadable)."""
    path = calibration_path(home)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == FORMAT and data.get("kernel_rows") else None


def train(data: dict[str, Any], exclude_seeds: set[str] | None = None) -> KernelPredictor:
    """The kernel predictor trained on a calibration's measurements (leaving out ``exclude_seeds``)."""
    skip = exclude_seeds or set()
    kernels = {sig: Kernel.from_dict(d) for sig, d in data["kernels"].items()}
    krows = [
        (kernels[r["sig"]], int(r["threads"]), float(r["ms"])) for r in data["kernel_rows"] if r["seed"] not in skip
    ]
    mrows = [
        ([(kernels[s], int(c)) for s, c in r["kernels"]], int(r["threads"]), float(r["ms"]))
        for r in data["model_rows"]
        if r["seed"] not in skip
    ]
    overhead: dict[int, list[float]] = {}
    for r in data["overhead"]:
        overhead.setdefault(int(r["threads"]), []).append(float(r["ms"]))
    return KernelPredictor().fit(krows, mrows, {t: float(np.median(v)) for t, v in overhead.items()})


def seed_errors(data: dict[str, Any], folds: int = 3) -> dict[str, float]:
    """Per seed, the median relative error of its kernels' predictions by a predictor trained without that
    seed's fold (grouped k-fold by seed): where adaptive sampling looks next."""
    kernels = {sig: Kernel.from_dict(d) for sig, d in data["kernels"].items()}
    errors = _held_out_errors(data, kernels, lambda row, _: str(row["seed"]), folds)
    return {s: float(np.median(v)) for s, v in errors.items()}


def heldout_models(data: dict[str, Any], folds: int = 3) -> dict[str, Any]:
    """Whole seed models predicted from their kernels by a predictor trained without their fold (grouped k-fold
    by seed): n, within_10pct, median_ape, and the median CV of their repeats (the noise floor)."""
    seeds = sorted({r["seed"] for r in data["model_rows"]})
    if len(seeds) < folds:
        return {"n": 0}
    kernels = {sig: Kernel.from_dict(d) for sig, d in data["kernels"].items()}
    preds, actual, cvs = [], [], []
    for f in range(folds):
        held = set(seeds[f::folds])
        model = train(data, held)
        for r in data["model_rows"]:
            if r["seed"] in held:
                preds.append(model.predict([(kernels[s], int(c)) for s, c in r["kernels"]], int(r["threads"])))
                actual.append(float(r["ms"]))
                cvs.append(float(r["cv"]))
    from scipy.stats import spearmanr

    ape = np.abs(np.array(preds) - np.array(actual)) / np.array(actual)
    return {
        "n": len(ape),
        "models": len(seeds),
        "folds": folds,
        "within_10pct": float(np.mean(ape <= 0.10)),
        "median_ape": float(np.median(ape)),
        "spearman": float(spearmanr(preds, actual).statistic) if len(ape) > 2 else None,
        "noise_cv": float(np.median(cvs)),
    }


def heldout_error(data: dict[str, Any]) -> float:
    """The median relative error of whole-model predictions on held-out seeds (inf when unknown)."""
    h = data.get("heldout") or heldout_models(data)
    return float(h["median_ape"]) if h.get("n") else math.inf


def _empty(fp: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "fingerprint": fp,
        "seconds": 0.0,
        "seeds": [],
        "kernels": {},
        "kernel_rows": [],
        "model_rows": [],
        "overhead": [],
        "failed": [],
    }


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def calibrate(
    max_minutes: float = 20.0,
    home: Path | None = None,
    fresh: bool = False,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    threads: list[int] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Measure kernel micro-benchmarks for at most ``max_minutes`` (one seed model at a time; the first always
    runs) and cache them. Returns (the calibration, whether the cache was reused as it was). A cached
    calibration is reused unless ``fresh``."""
    from chipfit.hardware.detect import cpu_features, cpu_quota
    from chipfit.measure.lock import measurement_lock
    from chipfit.workspace import default_home

    say = progress or (lambda _line: None)
    lock_home = home or default_home()
    fp = machine_fingerprint()
    path = calibration_path(home, fp)
    cached = None if fresh else load_calibration(home)
    if cached is not None:
        say(f"reusing this machine's calibration ({len(cached['kernel_rows'])} kernel timings, {path})")
        return cached, True
    data = _empty(fp)
    cores = cpu_quota()
    threads = threads or sorted({1, cores})
    reduce_range = not cpu_features()["int8_dot"]
    rng = np.random.default_rng(0)
    queue = initial_seeds(rng, encoders=_has_torch())
    done: set[str] = set()
    start = clock()
    deadline = start + max_minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="chipfit-calibrate-") as tmp:
        while clock() < deadline or not data["seeds"]:
            if not queue:
                queue = _next_round(data, rng)
                if not queue:
                    break
            seed = queue.pop(0)
            if seed.id in done:
                continue
            done.add(seed.id)
            say(f"measuring the kernels of {seed.id} at {', '.join(map(str, threads))} thread(s) ({len(done)}/~)")
            try:  # holding the measurement lock of these cores: a fit measuring beside it takes turns
                with measurement_lock(lock_home, wait_s=600.0, what=f"chipfit predict calibrate ({seed.id})") as lock:
                    got = measure_seed(seed, Path(tmp), threads, reduce_range)
                if lock.note is not None:
                    data["failed"].append(f"{seed.id}: measured under another run's load ({lock.note})")
                    continue
            except Exception as exc:  # a seed that fails to build is skipped (it is a sample, not the user's model)
                data["failed"].append(f"{seed.id}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            data["seeds"].append(seed.to_dict())
            data["kernels"].update(got["kernels"])
            data["kernel_rows"] += got["kernel_rows"]
            data["model_rows"] += got["model_rows"]
            data["overhead"] += got["overhead"]
            data["failed"] += got["failed"]
    data["seconds"] = clock() - start
    data["heldout"] = heldout_models(data)
    data["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp_path = path.with_suffix(f".tmp{os.getpid()}")
    tmp_path.write_text(json.dumps(data))
    tmp_path.replace(path)
    say(f"calibration saved: {len(data['kernel_rows'])} kernel timings of {len(data['seeds'])} seed models ({path})")
    return data, False


def _next_round(data: dict[str, Any], rng: np.random.Generator, size: int = 6) -> list[Seed]:
    """Adaptive sampling: new seeds near the seeds whose kernels are predicted worst on held-out folds (half),
    and near random seeds (the other half, so no region is starved)."""
    seeds = [seed_from(s) for s in data["seeds"]]
    if not seeds:
        return []
    errors = seed_errors(data)
    ranked = sorted(seeds, key=lambda s: -errors.get(s.id, math.inf))
    worst = ranked[: max(1, size // 2)]
    picks = worst + [seeds[int(i)] for i in rng.integers(0, len(seeds), size - len(worst))]
    return [neighbours(s, rng) for s in picks]


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """Per kernel type: timings, seeds, the median CV of the repeats (noise floor), and held-out median error."""
    kernels = {sig: Kernel.from_dict(d) for sig, d in data["kernels"].items()}
    errors = _kernel_errors(data, kernels)
    by_op: dict[str, dict[str, Any]] = {}
    for r in data["kernel_rows"]:
        op = kernels[r["sig"]].op
        e = by_op.setdefault(op, {"n": 0, "cv": [], "ape": []})
        e["n"] += 1
        e["cv"].append(float(r["cv"]))
    for op, ape in errors.items():
        by_op[op]["ape"] = ape
    ops = {
        op: {
            "n": e["n"],
            "noise_cv": float(np.median(e["cv"])),
            "heldout_median_ape": float(np.median(e["ape"])) if e["ape"] else None,
        }
        for op, e in sorted(by_op.items(), key=lambda kv: -kv[1]["n"])
    }
    return {
        "seconds": data["seconds"],
        "seeds": len(data["seeds"]),
        "kernel_timings": len(data["kernel_rows"]),
        "kernel_types": len(ops),
        "model_timings": len(data["model_rows"]),
        "failed": len(data["failed"]),
        "heldout_models": data.get("heldout") or heldout_models(data),
        "ops": ops,
    }


def _kernel_errors(data: dict[str, Any], kernels: dict[str, Kernel], folds: int = 3) -> dict[str, list[float]]:
    return _held_out_errors(data, kernels, lambda _, kernel: kernel.op, folds)


def _held_out_errors(
    data: dict[str, Any], kernels: dict[str, Kernel], key: Callable[[dict[str, Any], Kernel], str], folds: int
) -> dict[str, list[float]]:
    """Relative errors of kernel predictions made by a predictor trained without the kernel's seed (grouped
    k-fold by seed), grouped by ``key(row, kernel)``; empty with fewer seeds than folds."""
    seeds = sorted({r["seed"] for r in data["kernel_rows"]})
    out: dict[str, list[float]] = {}
    if len(seeds) < folds:
        return out
    for f in range(folds):
        held = set(seeds[f::folds])
        model = train(data, held)
        rows = [r for r in data["kernel_rows"] if r["seed"] in held]
        ks = [kernels[r["sig"]] for r in rows]
        pred = model.kernel_ms(ks, [int(r["threads"]) for r in rows])
        for r, k, p in zip(rows, ks, pred, strict=True):
            actual = model.net_ms(k, int(r["threads"]), float(r["ms"]))
            out.setdefault(key(r, k), []).append(abs(p - actual) / actual)
    return out
