"""Interleaved A/B timing in one process: rounds alternate A and B so drift hits both alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

Runner = Callable[[Mapping[str, np.ndarray]], object]


def interleaved(
    runners: dict[str, Runner],
    feeds: Mapping[str, np.ndarray],
    rounds: int = 20,
    per_round: int = 200,
    max_round_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """Per runner: p50/p99 over all samples (ms); per pair vs the first runner: median and IQR of per-round
    ratios of medians (first / other, so > 1 means the other is faster). ``max_round_s`` caps one runner's
    turn in a round (at least 3 runs), so that a slow runner does not stretch the benchmark for hours."""
    for run in runners.values():  # warm-up
        for _ in range(20 if max_round_s is None else 3):
            run(feeds)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    round_medians: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            run, buf = runners[name], []
            stop = time.perf_counter() + max_round_s if max_round_s else None
            for i in range(per_round):
                t0 = time.perf_counter_ns()
                run(feeds)
                buf.append((time.perf_counter_ns() - t0) / 1e6)
                if stop is not None and i >= 2 and time.perf_counter() > stop:
                    break
            samples[name] += buf
            round_medians[name].append(float(np.median(buf)))
    base = names[0]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        s = np.asarray(samples[name])
        ratios = np.asarray(round_medians[base]) / np.asarray(round_medians[name])
        out[name] = {
            "p50_ms": float(np.percentile(s, 50)),
            "p99_ms": float(np.percentile(s, 99)),
            "n": float(len(s)),
            "speedup_median": float(np.median(ratios)),
            "speedup_q25": float(np.percentile(ratios, 25)),
            "speedup_q75": float(np.percentile(ratios, 75)),
        }
    return out
