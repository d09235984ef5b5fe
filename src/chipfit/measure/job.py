"""The measurement worker's contract: what it is asked to do (``WorkerJob``) and what it answers (``WorkerResult``).

These frozen, typed objects are the only thing that crosses the process boundary between the search and the
worker (and, later, a farm node or the team service's job queue): built by their constructors, serialised
and read back only here (``to_json`` / ``from_json``), picklable as they are. The JSON envelope carries
``PROTOCOL``; reading another protocol's job or result is a ``WorkerProtocolError`` that names both versions.

Bump ``PROTOCOL`` when the schema below changes (``schema_fingerprint`` must then match the new entry of
``SCHEMAS``; a test checks it) or when the worker's way of measuring changes: stored measurements are keyed
by it and are then measured again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chipfit.measure.measurement import Measurement
from chipfit.measure.stats import TimingPolicy

__all__ = [
    "PROTOCOL",
    "LatencyProbe",
    "PassStep",
    "QualityJob",
    "SensitivityRanking",
    "SensitivityRequest",
    "Status",
    "WorkerJob",
    "WorkerMetrics",
    "WorkerProtocolError",
    "WorkerResult",
    "schema_fingerprint",
]

PROTOCOL = 4  # 3: typed job/result, timing runs to 100 samples before a stable estimate may stop it;
# 4: throughput over the time spent running, not the timing loop's wall time; pass steps typed (PassStep)
SCHEMAS = {3: "04433398a58b1217", 4: "02bf38e5ff73a8f9"}  # PROTOCOL -> schema_fingerprint(); a test keeps them in step

Status = Literal["ok", "failed", "timeout", "oom", "skipped", "pruned"]


class WorkerProtocolError(ValueError):
    """A job or result written by another protocol version (e.g. a farm node with another chipfit)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QualityJob(_Frozen):
    """How to evaluate outputs: in chunks of ``chunk`` on the first ``limit`` samples; accuracy by ``metric``
    when the data has labels; fidelity against ``reference`` (an .npz of the reference's outputs), or save
    this candidate's outputs to ``save_reference`` (the reference candidate)."""

    chunk: int = Field(gt=0)
    limit: int | None = None
    metric: str | None = None
    fidelity_metric: str = "cosine"
    save_reference: Path | None = None
    reference: Path | None = None


class LatencyProbe(_Frozen):
    """Before full measurement: give up when the median cannot beat ``beat_ms`` even allowing ``margin``."""

    beat_ms: float = Field(gt=0)
    margin: float = Field(ge=1)


class SensitivityRequest(_Frozen):
    """Rank the nodes the quantizing pass at ``quant_index`` quantizes, each alone, on ``samples`` samples,
    within ``time_s`` seconds (``measure.sensitivity``)."""

    quant_index: int = Field(ge=0)
    time_s: float = Field(default=300.0, gt=0)
    samples: int = Field(default=32, gt=0)


class PassStep(_Frozen):
    """One step of a candidate's pass chain: the pass's registered name and its parameters."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, step: Mapping[str, Any]) -> PassStep:
        """From a candidate's ``{"name": ..., "params": {...}}`` step."""
        return cls(name=str(step["name"]), params=dict(step.get("params") or {}))

    def as_dict(self) -> dict[str, Any]:
        """The step as ``passes.apply_passes`` takes it (and as cache keys are computed from)."""
        return {"name": self.name, "params": dict(self.params)}


class WorkerJob(_Frozen):
    """One candidate to measure (or, with ``sensitivity``, to rank node by node)."""

    model_path: Path
    model_sha256: str
    passes: tuple[PassStep, ...] = ()
    backend: str
    target: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)
    batch: int = Field(default=1, gt=0)
    input_names: tuple[str, ...]
    data_dir: Path
    calib_dir: Path | None = None
    calib_sha256: str | None = None
    variants_dir: Path
    home: Path | None = None  # chipfit's home in the worker (backends keep caches there)
    timing: TimingPolicy = Field(default_factory=TimingPolicy)
    quality: QualityJob
    probe: LatencyProbe | None = None
    sensitivity: SensitivityRequest | None = None

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        return _load(cls, text, "job")


class WorkerMetrics(_Frozen):
    """What a measurement found; every field is optional because a failure keeps what was measured so far."""

    size_mb: float | None = None
    compile_s: float | None = None
    probe_p50_ms: float | None = None
    probe_runs: int | None = None
    probe_beat_ms: float | None = None
    samples: int | None = None
    p50_ms: float | None = None
    p50_ci_ms: tuple[float, float] | None = None
    p90_ms: float | None = None
    p90_ci_ms: tuple[float, float] | None = None
    p99_ms: float | None = None
    p99_ci_ms: tuple[float, float] | None = None
    p99_reliable: bool | None = None  # False: the p99 comes from fewer than stats.MIN_P99_SAMPLES samples
    mean_ms: float | None = None
    min_ms: float | None = None
    throughput: float | None = None
    stopped_by: str | None = None
    energy_j_per_inf: float | None = None
    energy_counter: str | None = None
    peak_memory_mb: float | None = None
    memory_method: str | None = None
    fidelity: float | None = None
    fidelity_metric: str | None = None
    accuracy: float | None = None
    accuracy_metric: str | None = None
    eval_samples: int | None = None


class SensitivityRanking(_Frozen):
    """Nodes with their output error when quantized alone, worst first; ``unranked``: not reached in time."""

    ranking: tuple[tuple[str, float], ...] = ()
    unranked: tuple[str, ...] = ()
    samples: int = 0


class WorkerResult(_Frozen):
    status: Status
    metrics: WorkerMetrics = Field(default_factory=WorkerMetrics)
    notes: tuple[str, ...] = ()
    error: str | None = None
    traceback: str | None = None
    sensitivity: SensitivityRanking | None = None

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        return _load(cls, text, "result")

    def to_measurement(self, wall_s: float = 0.0) -> Measurement:
        """The core ``Measurement`` the store and selection read: the metrics that were measured, by name."""
        metrics = self.metrics.model_dump(mode="json", exclude_none=True)
        return Measurement(self.status, metrics, self.error, list(self.notes), wall_s)


def _dump(obj: BaseModel) -> str:
    return json.dumps({"protocol": PROTOCOL, "kind": type(obj).__name__, "body": obj.model_dump(mode="json")})


def _load(cls: type[Any], text: str, what: str) -> Any:
    try:
        envelope = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkerProtocolError(f"worker {what} is not JSON ({exc}); expected a {cls.__name__}.to_json()") from None
    if not isinstance(envelope, dict) or envelope.get("kind") != cls.__name__:
        got = envelope.get("kind") if isinstance(envelope, dict) else type(envelope).__name__
        raise WorkerProtocolError(f"worker {what} holds {got!r}; expected a {cls.__name__} envelope")
    version = envelope.get("protocol")
    if version != PROTOCOL:
        raise WorkerProtocolError(
            f"worker {what} speaks protocol {version!r}, this chipfit speaks {PROTOCOL}: run the same chipfit "
            "version on both sides of the worker boundary (e.g. on every farm node)"
        )
    try:
        return cls.model_validate(envelope.get("body"))
    except ValidationError as exc:
        raise WorkerProtocolError(f"worker {what} does not match {cls.__name__} (protocol {PROTOCOL}): {exc}") from None


def schema_fingerprint() -> str:
    """A hash of the job's and the result's JSON schema: it changes whenever a field does."""
    schemas = {c.__name__: c.model_json_schema() for c in (WorkerJob, WorkerResult)}
    return hashlib.sha256(json.dumps(schemas, sort_keys=True).encode()).hexdigest()[:16]
