"""The machine's own roof, measured once: SGEMM rate (GFLOP/s) through numpy's BLAS on the cores of the CPU
quota, and memory bandwidth (GB/s) from a large array copy. Cached per machine under the chipfit home, so
the benchmark table and the predictor compare against what this machine reaches, not a datasheet."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.hardware.detect import cpu_quota, local_machine
from chipfit.workspace import default_home

__all__ = ["gemm_gflops", "memory_bandwidth_gbs", "peak_rates"]

_CACHE = "microbench.json"


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Best-of-``repeats`` fp32 GEMM rate of an n×n×n product (2n³ FLOP each)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)  # warm the BLAS threads
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def memory_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best-of-``repeats`` copy bandwidth (bytes read + bytes written) over an array far larger than caches."""
    src = np.ones(mb * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def _machine_key() -> str:
    cpu = local_machine()["cpu"]
    return f"{cpu['model']}|{cpu['arch']}|{cpu_quota()}|{os.cpu_count()}"


def peak_rates(home: Path | None = None, refresh: bool = False) -> dict[str, Any]:
    """``{"fp32_gflops", "mem_gbs", "machine", "measured_at"}``, measured on first use and cached per machine."""
    path = (home or default_home()) / _CACHE
    key = _machine_key()
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if not refresh and key in cache:
        return dict(cache[key])
    entry = {
        "fp32_gflops": round(gemm_gflops(), 1),
        "mem_gbs": round(memory_bandwidth_gbs(), 1),
        "machine": key,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    cache[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)
    return dict(entry)
