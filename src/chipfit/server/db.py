"""The service's tables, beside the results store's in the same database: teams, models, data sets, jobs (the
queue) and job events (what a job's event stream replays). The engine is the results store's
(``chipfit.store.Store``: SQLite with WAL and a busy timeout, or any SQLAlchemy URL), so that a job's
measurements and its rows share one database and one transaction discipline: each write commits at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chipfit.store import Store

__all__ = ["DataRow", "Database", "EventRow", "JobRow", "ModelRecordRow", "TeamRow", "now"]

TERMINAL = ("done", "failed", "cancelled", "stopped_by_quota")
STATES = ("queued", "running", *TERMINAL)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Base(DeclarativeBase):
    pass


class TeamRow(_Base):
    __tablename__ = "server_teams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256(server key, secret), hex
    quota_usd: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: no quota
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ModelRecordRow(_Base):
    __tablename__ = "server_models"
    __table_args__ = (UniqueConstraint("team_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32), ForeignKey("server_teams.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))  # the client's file name: shown, never used as a path
    sha256: Mapped[str] = mapped_column(String(64))  # chipfit's model hash (the results store's key)
    path: Mapped[str] = mapped_column(Text)  # under the data dir, named by hash
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # inputs, outputs, opset, size
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class DataRow(_Base):
    __tablename__ = "server_data"
    __table_args__ = (UniqueConstraint("model_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32), ForeignKey("server_teams.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(32), ForeignKey("server_models.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))  # of the file
    path: Mapped[str] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # samples, labels, arrays
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class JobRow(_Base):
    __tablename__ = "server_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32), ForeignKey("server_teams.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(String(32))
    data_id: Mapped[str] = mapped_column(String(32))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # the JobRequest as submitted
    state: Mapped[str] = mapped_column(String(24), index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    spend_usd: Mapped[float] = mapped_column(Float, default=0.0)
    bound_usd: Mapped[float] = mapped_column(Float, default=0.0)  # what the job may cost at most (time budget)
    usd_per_hour: Mapped[float] = mapped_column(Float, default=0.0)  # the price its measurements are charged at
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the job process while it runs
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventRow(_Base):
    __tablename__ = "server_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # the stream's event id
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("server_jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # state, candidate, line, end
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Database:
    """The results store and the service's tables on one engine."""

    def __init__(self, url: str) -> None:
        self.store = Store(url)  # creates the store's tables; a bad URL is a StoreError naming the fix
        self.engine = self.store.engine
        _Base.metadata.create_all(self.engine)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.store.close()
