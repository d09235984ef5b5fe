"""Running an executable on evaluation data: the feeds of one batch, and all outputs in chunks.

Shared by the measurement worker and the sensitivity ranking (both import it; it imports neither).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["collect_outputs", "feed"]


def feed(data: dict[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    """``size`` consecutive samples from ``start``, wrapping around when the data holds fewer."""
    n = len(next(iter(data.values())))
    idx = (np.arange(start, start + size) % n) if start + size > n else slice(start, start + size)
    return {k: np.ascontiguousarray(v[idx]) for k, v in data.items()}


def collect_outputs(
    exe: Any, data: dict[str, np.ndarray], chunk: int, limit: int | None, fixed: bool = False
) -> list[np.ndarray]:
    """Outputs on the first ``limit`` samples in chunks; with ``fixed`` (an executable compiled for one batch
    size) the last chunk is filled up with samples from the start and its extra outputs dropped."""
    n = len(next(iter(data.values())))
    n = min(n, limit) if limit else n
    collected: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        outs = exe.run(feed(data, start, chunk if fixed else size))
        collected.append([np.asarray(o)[:size] for o in outs])
    return [np.concatenate([c[i] for c in collected], axis=0) for i in range(len(collected[0]))]
