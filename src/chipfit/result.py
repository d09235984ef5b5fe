"""What ``fit`` found (:class:`FitResult`) and the tables derived from it that the artifact's manifest and the
HTML report both show. It lives apart from ``pipeline`` (which runs the search), ``package`` (which writes the
artifact) and ``report`` (which renders it), so that each of them imports it and none imports another."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chipfit.model import Model
    from chipfit.search.select import CandidateResult
    from chipfit.spec import Spec

__all__ = ["FitResult", "batch_profile", "constraints_table"]


@dataclass
class FitResult:
    """What ``fit`` found. ``winner`` is None when nothing met the constraints (see ``near_misses``)."""

    winner: CandidateResult | None
    pareto: list[CandidateResult]
    candidates: list[CandidateResult]
    near_misses: list[CandidateResult]
    reference: CandidateResult | None
    spec: Spec
    model: Model
    environment: dict[str, Any]
    elapsed_s: float
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    mixed_precision: dict[str, Any] | None = None  # the accuracy-aware search's report, when it ran

    @property
    def feasible(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feasible": self.feasible,
            "winner": self.winner.to_dict() if self.winner else None,
            "pareto": [r.to_dict() for r in self.pareto],
            "near_misses": [r.to_dict() for r in self.near_misses],
            "candidates": [r.to_dict() for r in self.candidates],
            "reference": self.reference.to_dict() if self.reference else None,
            "spec": self.spec.model_dump(),
            "model": self.model.summary(),
            "environment": self.environment,
            "elapsed_s": self.elapsed_s,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "notes": self.notes,
            "mixed_precision": self.mixed_precision,
            "quality_floor": _floor(self),
        }


def _floor(result: FitResult) -> dict[str, Any] | None:
    """The default quality floor, when one applied to a candidate (reduced precision, no quality bound)."""
    from chipfit.search.select import default_quality_floor, quality_floor_text

    floor = default_quality_floor(result.spec)
    if floor is None or not any(r.quality_floor is not None for r in result.candidates):
        return None
    return {"min_fidelity": floor, "metric": result.spec.fidelity_metric, "text": quality_floor_text(result.spec)}


def constraints_table(result: FitResult) -> list[dict[str, Any]]:
    """One row per bound of the spec (and the default quality floor, when the winner was held to it): its value
    on the winner, whether the winner held it, and a note when the verdict rests on too few samples."""
    from chipfit.spec import CONSTRAINTS

    rows = []
    w = result.winner
    bounds = result.spec.bounds()
    if w is not None and w.quality_floor is not None:
        bounds["min_fidelity"] = w.quality_floor
    for name, bound in bounds.items():
        metric = CONSTRAINTS[name].metric
        value = w.metric(metric) if w else None
        held = w is not None and not any(v.constraint == name for v in w.violations)
        row: dict[str, Any] = {"constraint": name, "bound": bound, "value": value, "held": held}
        if name == "min_fidelity" and w is not None and w.quality_floor is not None:
            row["note"] = "default floor for reduced precision"
        if name == "max_p99_ms" and w is not None and w.p99_reliable is False:
            row["note"] = f"p99 from {w.metric('samples')} samples: not reliable"
        rows.append(row)
    return rows


def batch_profile(result: FitResult) -> list[dict[str, Any]]:
    """Latency per batch size of the winner's configuration (what the server's batcher starts from)."""
    w = result.winner
    if w is None:
        return []
    same = [r for r in result.candidates if r.candidate.config_id == w.candidate.config_id and r.measurement.ok]
    return [
        {"batch": r.candidate.batch, **{k: r.metric(k) for k in ("p50_ms", "p90_ms", "p99_ms", "throughput")}}
        for r in sorted(same, key=lambda r: r.candidate.batch)
    ]
