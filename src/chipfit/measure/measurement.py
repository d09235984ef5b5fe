"""What measuring one candidate produced (core interface: the store and selection read it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["STATUSES", "Measurement"]

STATUSES = ("ok", "failed", "timeout", "oom", "skipped")


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

    def get(self, key: str) -> Any:
        return self.metrics.get(key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        return cls(d["status"], d.get("metrics") or {}, d.get("error"), d.get("notes") or [], d.get("wall_s", 0.0))
