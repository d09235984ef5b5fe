"""What crosses the process (or Ray task) boundary of one explore trial: the job the study hands a trial, the
hardware bound it checks, and the outcome it hands back. Frozen, typed, built by their constructors, and
serialised here only (``dumps`` / ``load_job`` / ``load_outcome``): the JSON carries ``TRIAL_PROTOCOL``, and a
reader refuses any other version instead of guessing at fields that moved.

Bump ``TRIAL_PROTOCOL`` whenever a field is added, removed or changes meaning: ``schema_fingerprint`` (the
fields' names and types) must then match the new entry of ``SCHEMAS``, and a test checks that it does. Reading
validates every field's type (pydantic), so a job or outcome that does not match this schema is refused by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

__all__ = [
    "TRIAL_PROTOCOL",
    "HardwareBound",
    "ProtocolError",
    "TrialJob",
    "TrialOutcome",
    "TrialStatus",
    "dumps",
    "load_job",
    "load_outcome",
    "schema_fingerprint",
]

TRIAL_PROTOCOL = 6  # 2: typed reading (pydantic), no free-form ``extra`` in the outcome; 3: trust_pickle; 4: max_units;
# 5: seed; 6: train_memory_mb (job), remat_overhead (outcome)
SCHEMAS = {
    2: "19c341d30843d029",
    3: "06c6deaef8206bc6",
    4: "1658a2794ea3f6bb",
    5: "7e5998905c77b9b9",
    6: "c383a51ed3014791",
}  # TRIAL_PROTOCOL -> schema_fingerprint(); a test keeps them in step
TrialStatus = Literal["complete", "pruned", "stopped", "rejected", "fail"]
_STATUSES: tuple[str, ...] = ("complete", "pruned", "stopped", "rejected", "fail")


_STRICT = ConfigDict(extra="forbid")  # read by pydantic when it validates the dataclasses below


class ProtocolError(ValueError):
    """A trial job or outcome written by another version of chipfit (or not one at all)."""


@dataclass(frozen=True)
class HardwareBound:
    """The bound each trial checks (``--target --max-p99-ms --max-memory-mb``), with where the predictor
    trained on the store was saved for the trials (``predictor``: a pickle of (Predictor, Target))."""

    __pydantic_config__ = _STRICT

    target: str
    max_p99_ms: float | None
    max_memory_mb: float | None
    measure: bool  # the target is this machine: measure after the first report
    predictor: str
    rel_error: float  # the predictor's relative error (inf when it could not be evaluated)
    margin: float  # a predicted latency rejects only beyond bound × margin
    store: str

    def public_dict(self) -> dict[str, Any]:
        """For reports and strict JSON: no file paths or URLs, no infinities."""
        out = asdict(self)
        for k in ("predictor", "store"):
            out.pop(k)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: which study and trial (by number), its sampled config, and its limits."""

    __pydantic_config__ = _STRICT

    space: str  # the space file
    study: str  # the study's name in ``storage``
    storage: str  # the study's database URL
    trial_number: int
    config: dict[str, Any]
    checkpoint: str  # where ctx.checkpoint() writes
    deadline: float  # wall clock (seconds since the epoch) at which this trial's share of the budget ends
    threads: int = 1
    share: float = 1.0  # the part of the target machine the trial holds (its price share)
    max_memory_mb: int | None = None
    threads_file: str | None = None  # deadline mode: where the scheduler writes the cores the trial holds
    bound: HardwareBound | None = None
    export: bool = False  # export the trained model to ONNX next to the checkpoint
    prune: bool = True  # ASHA on (else every trial runs to the end)
    outcome_file: str | None = None  # the local runner's: where the child writes its outcome
    trust_pickle: bool = False  # model files and checkpoints may be unpickled (runs code from them)
    max_units: int | None = None  # a budget in resource units: the trial stops (stopped) once it trained these
    seed: int = 0  # the study's seed (with the trial's number, seeds what the trainable suggests in its process)
    train_memory_mb: float | None = None  # --train-memory-mb: a step that does not fit gets a remat plan (ctx.remat)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"TrialJob.threads must be ≥ 1, got {self.threads}.")
        if not 0 < self.share <= 1:
            raise ValueError(f"TrialJob.share must be in (0, 1], got {self.share}.")


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended. ``value`` and ``steps`` are set when it completed."""

    __pydantic_config__ = _STRICT

    status: TrialStatus
    reason: str = ""
    value: float | None = None
    steps: int | None = None
    onnx: str | None = None  # the exported trained model, when the job asked for it
    threads: int | None = None  # the cores it held at its end
    remat_overhead: float | None = None  # its remat plan's predicted recompute fraction (charged with its units)
    traceback: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"TrialOutcome.status must be one of {', '.join(_STATUSES)}, got {self.status!r}.")
        if self.status == "complete" and self.value is None:
            raise ValueError("a complete TrialOutcome needs its value.")

    @classmethod
    def failed(cls, reason: str, traceback: str | None = None) -> TrialOutcome:
        return cls("fail", reason=reason, traceback=traceback)


def dumps(obj: TrialJob | TrialOutcome) -> str:
    """The one serialisation of a job or an outcome (JSON, with its kind and ``TRIAL_PROTOCOL``)."""
    kind = "job" if isinstance(obj, TrialJob) else "outcome"
    return json.dumps({"protocol": TRIAL_PROTOCOL, "kind": kind, **asdict(obj)})  # no default=str: fail loudly


def _read(text: str, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"a trial {kind} must be JSON written by chipfit.explore.job.dumps; {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise ProtocolError(f"expected a trial {kind}, got {str(text)[:80]!r}.")
    if doc.get("protocol") != TRIAL_PROTOCOL:
        raise ProtocolError(
            f"trial {kind} protocol {doc.get('protocol')!r} is not this chipfit's ({TRIAL_PROTOCOL}): the driver and "
            "the trial workers must run the same chipfit version. Install the same version on every node."
        )
    doc.pop("kind")
    doc.pop("protocol")
    return doc


_JOB = TypeAdapter(TrialJob)
_OUTCOME = TypeAdapter(TrialOutcome)


def _validated(adapter: TypeAdapter[Any], doc: dict[str, Any], kind: str) -> Any:
    try:
        return adapter.validate_python(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ProtocolError(f"a trial {kind} this chipfit cannot read ({problems}).") from None


def load_job(text: str) -> TrialJob:
    job: TrialJob = _validated(_JOB, _read(text, "job"), "job")
    return job


def load_outcome(text: str) -> TrialOutcome:
    outcome: TrialOutcome = _validated(_OUTCOME, _read(text, "outcome"), "outcome")
    return outcome


def schema_fingerprint() -> str:
    """A hash of the fields (names and declared types) of the job, the bound and the outcome."""
    fields = {
        c.__name__: [(f.name, str(f.type)) for f in dataclasses.fields(c)]
        for c in (TrialJob, HardwareBound, TrialOutcome)
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
