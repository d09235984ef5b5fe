"""Cost and energy of a measured (or predicted) candidate on a target.

``usd_per_1m``: the target's $/hour divided by the candidate's throughput (one stream, as measured), per
million inferences. ``energy_mj``: millijoules per inference — *measured* when the worker read energy
counters around its timing loop (RAPL, NVML), else *modelled* as the target's power, scaled to the share of
its cores the candidate used, times the time per inference. ``energy_method`` says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chipfit.hardware.catalog import Target

__all__ = ["cost_energy", "threads_of", "usd_per_1m"]


def usd_per_1m(usd_per_hour: float, throughput: float) -> float:
    return usd_per_hour / (throughput * 3600.0) * 1e6


def threads_of(options: Mapping[str, Any]) -> int | None:
    """The thread count a candidate's runtime options set, whatever its backend calls it (None: not set)."""
    for key in ("threads", "intra_op_num_threads", "num_threads"):
        if options.get(key):
            return int(options[key])
    return None


def cost_energy(metrics: Mapping[str, Any], target: Target, options: Mapping[str, Any]) -> dict[str, Any]:
    """``usd_per_1m``, ``energy_mj`` and ``energy_method`` for one measurement's metrics on ``target``."""
    thr = metrics.get("throughput")
    if not thr or thr <= 0:
        return {}
    out: dict[str, Any] = {"usd_per_1m": usd_per_1m(target.usd_per_hour, float(thr)), "cost_target": target.name}
    measured = metrics.get("energy_j_per_inf")
    if measured is not None and measured > 0:
        out["energy_mj"] = float(measured) * 1e3
        out["energy_method"] = f"measured: {metrics.get('energy_counter', 'energy counters')}"
    else:
        threads = threads_of(options)
        share = min(1.0, threads / (target.threads or target.cores)) if threads and not target.gpu else 1.0
        out["energy_mj"] = target.watts * share / float(thr) * 1e3
        out["energy_method"] = f"modelled: {target.watts:g} W × {share:.2f} of {target.name} × time per inference"
    return out
