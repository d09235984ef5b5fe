"""What measuring one candidate produced (core interface: the store and selection read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "Measurement", "looks_like_oom"]

STATUSES = ("ok", "failed", "timeout", "oom", "skipped", "pruned")  # pruned: a latency probe showed it cannot win
_OOM_MARKERS = ("MemoryError", "bad_alloc", "Failed to allocate memory", "Cannot allocate memory", "out of memory")


def looks_like_oom(text: str) -> bool:
    """True when an error text or stderr tail shows an allocation failure."""
    return any(m in text for m in _OOM_MARKERS)


@dataclass
class Measurement:
    """``metrics`` holds p50_ms, p90_ms, p99_ms (+ _ci_ms), samples, throughput, peak_memory_mb, size_mb,
    compile_s, accuracy / fidelity and their metric names; ``error`` the reason when status is not ok."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Measurement status must be one of {STATUSES}; got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"
