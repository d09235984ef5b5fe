"""What the service hands out: plain frozen records of teams, models, data sets, jobs and job events, made from
their database rows (``db.py``); pages and API routes read their fields and ``to_dict()``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chipfit.server.db import TERMINAL, DataRow, JobRow, ModelRecordRow, TeamRow

__all__ = ["DataRecord", "Event", "Job", "ModelRecord", "Team", "data_of", "job_of", "model_of", "team_of"]


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    quota_usd: float | None
    spent_usd: float
    created_at: dt.datetime
    token_hash: str = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "quota_usd": self.quota_usd, "spent_usd": self.spent_usd}


@dataclass(frozen=True)
class ModelRecord:
    id: str
    name: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    info: dict[str, Any]
    created_at: dt.datetime
    path: Path = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "sha256": self.sha256, "inputs": self.inputs, "outputs": self.outputs}


@dataclass(frozen=True)
class DataRecord:
    id: str
    model_id: str
    name: str
    sha256: str
    info: dict[str, Any]
    created_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model_id": self.model_id, "name": self.name, "sha256": self.sha256, **self.info}


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    model_id: str
    data_id: str
    state: str
    progress: tuple[int, int]  # candidates done, total
    spend_usd: float
    bound_usd: float
    usd_per_hour: float
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self, result: bool = True) -> dict[str, Any]:
        """Plain JSON types; the result is shared, not copied (a finished fit's result is large)."""
        out = {k: getattr(self, k) for k in _JOB_FIELDS}
        out["progress"] = {"done": self.progress[0], "total": self.progress[1]}
        for k in ("created_at", "started_at", "finished_at"):
            out[k] = out[k].isoformat() if out[k] else None
        if not result:
            out.pop("result")
        return out


_JOB_FIELDS = tuple(f.name for f in fields(Job))


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]


def team_of(row: TeamRow) -> Team:
    return Team(row.id, row.name, row.quota_usd, row.spent_usd, row.created_at, row.token_hash)


def model_of(row: ModelRecordRow) -> ModelRecord:
    info = row.info
    return ModelRecord(
        row.id, row.name, row.sha256, info["inputs"], info["outputs"], info, row.created_at, Path(row.path)
    )


def data_of(row: DataRow) -> DataRecord:
    return DataRecord(row.id, row.model_id, row.name, row.sha256, row.info, row.created_at)


def job_of(row: JobRow) -> Job:
    return Job(
        row.id, row.kind, row.model_id, row.data_id, row.state, (row.done, row.total), row.spend_usd, row.bound_usd,
        row.usd_per_hour, row.request, row.result, row.error, row.attempts, row.created_at, row.started_at,
        row.finished_at,
    )  # fmt: skip
