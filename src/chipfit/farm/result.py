"""What a fit on the farm found: per target, the local fit's own ``FitResult`` (winner, candidates, near misses)
plus which node measured each candidate, and the farm's bookkeeping (lost and re-dispatched tasks, overhead)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from chipfit.result import FitResult

__all__ = ["FarmFitResult", "TargetResult"]


@dataclass
class TargetResult:
    """One target's outcome. ``nodes``: candidate id -> the node that measured it (a stored result keeps the node
    that measured it first)."""

    name: str
    declared: bool
    fit: FitResult
    nodes: dict[str, str] = field(default_factory=dict)
    lost: int = 0
    redispatched: int = 0

    @property
    def how(self) -> str:
        return "declared" if self.declared else "measured"

    def to_dict(self) -> dict[str, Any]:
        def with_node(d: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if d is None else {**d, "node": self.nodes.get(d["id"]), "how": self.how}

        fit = self.fit.to_dict()
        return {
            "how": self.how,
            "feasible": self.fit.feasible,
            "winner": with_node(fit["winner"]),
            "candidates": [with_node(c) for c in fit["candidates"]],
            "near_misses": [with_node(c) for c in fit["near_misses"]],
            "reference": with_node(fit["reference"]),
            "lost": self.lost,
            "redispatched": self.redispatched,
            "out_dir": str(self.fit.out_dir) if self.fit.out_dir else None,
            "notes": self.fit.notes,
        }


@dataclass
class FarmFitResult:
    address: str
    targets: dict[str, TargetResult]
    elapsed_s: float
    build_s: float  # building the variants on the driver, before any was dispatched
    overheads_s: list[float] = field(default_factory=list)  # per measured task: round trip minus the node's time

    @property
    def feasible(self) -> bool:
        return all(t.fit.feasible for t in self.targets.values())

    def to_dict(self) -> dict[str, Any]:
        over = sorted(self.overheads_s)
        return {
            "farm": self.address,
            "feasible": self.feasible,
            "targets": {name: t.to_dict() for name, t in self.targets.items()},
            "elapsed_s": self.elapsed_s,
            "build_s": self.build_s,
            "dispatch": {
                "tasks": len(over),
                "overhead_median_s": statistics.median(over) if over else None,
                "overhead_max_s": over[-1] if over else None,
            },
        }
