"""What ``chipfit recommend --farm`` needs from a farm beside ``farm_fit``: the catalogue targets present, the
store's farm measurements attributed to their targets for training, and the predictor's error against them."""

from __future__ import annotations

import statistics
from typing import Any

from chipfit.hardware.catalog import Target

__all__ = ["farm_error", "farm_targets", "farm_training_rows"]


def farm_targets(address: str, asked: tuple[str, ...], cat: dict[str, Target]) -> list[str]:
    """The catalogue targets present (live) in the farm at ``address`` among those ``asked`` (none: every one);
    raises FarmError (exit 2) when the farm cannot be reached."""
    from chipfit.farm.nodes import farm_nodes

    present = {n.target for n in farm_nodes(address) if n.alive and n.slots > 0}
    return sorted(t for t in present if t in cat and (not asked or t in asked))


def farm_training_rows(rows: list[dict[str, Any]], cat: dict[str, Target]) -> list[dict[str, Any]]:
    """``rows`` with each farm measurement (of a node that detected its target) attributed to its catalogue
    target rather than to this machine."""
    out = []
    for r in rows:
        farm = (r.get("env") or {}).get("farm") or {}
        name = farm.get("target")
        out.append(r | {"target": cat[name]} if name in cat and not farm.get("declared") else r)
    return out


def farm_error(predictor: Any, info: dict[str, Any], target: Target, candidates: list[Any]) -> dict[str, Any]:
    """The predictor's median absolute relative error on ``target`` against the farm's measurements (ok, with a
    p50) of the same candidates: {"n", "median_ape"} (None without any)."""
    measured = [r for r in candidates if r.measurement.ok and r.metric("p50_ms")]
    preds = predictor.predict_many([(info, r.candidate.to_dict(), target) for r in measured])
    errs = [abs(p.p50_ms - r.metric("p50_ms")) / r.metric("p50_ms") for r, p in zip(measured, preds, strict=True)]
    return {"n": len(errs), "median_ape": statistics.median(errs) if errs else None}
