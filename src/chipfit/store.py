"""The results store: SQLAlchemy over SQLite (default, under the chipfit home) or any URL, e.g. PostgreSQL
for a team. A measurement is keyed by (model hash, candidate, context, environment fingerprint), where the
context is everything else that decides its numbers (evaluation data, quality metrics, timing policy).
Each measurement is committed as soon as it is taken, so a run killed with ``kill -9`` loses nothing and a
rerun resumes from what is stored."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chipfit.candidate import Candidate
from chipfit.errors import StoreError
from chipfit.measure.measurement import Measurement
from chipfit.workspace import default_home

__all__ = ["Store", "default_url"]


class _Base(DeclarativeBase):
    pass


class MeasurementRow(_Base):
    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("model_hash", "candidate_id", "context_hash", "env_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_hash: Mapped[str] = mapped_column(String(64), index=True)
    candidate_id: Mapped[str] = mapped_column(String(32))
    context_hash: Mapped[str] = mapped_column(String(64))
    env_hash: Mapped[str] = mapped_column(String(32))
    candidate: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    notes: Mapped[list[str]] = mapped_column(JSON)
    env: Mapped[dict[str, Any]] = mapped_column(JSON)
    wall_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ModelRow(_Base):
    """What the predictor needs to know of a model it has measurements of: its graph, node by node."""

    __tablename__ = "models"

    model_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)


def default_url(home: Path | None = None) -> str:
    return f"sqlite:///{(home or default_home()) / 'chipfit.db'}"


def _by_key(model_hash: str, candidate: Candidate, context_hash: str, env_hash: str) -> Any:
    return select(MeasurementRow).where(
        MeasurementRow.model_hash == model_hash,
        MeasurementRow.candidate_id == candidate.id,
        MeasurementRow.context_hash == context_hash,
        MeasurementRow.env_hash == env_hash,
    )


class Store:
    """put/get measurements. ``Store()`` opens the default SQLite file; ``Store(url)`` any SQLAlchemy URL."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            if self.url.startswith("sqlite:///"):
                Path(self.url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, future=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            _Base.metadata.create_all(self.engine)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            raise StoreError(
                f"Cannot open the results store '{self.url}': {exc}. Pass --store with a writable SQLAlchemy URL "
                "(sqlite:///path/results.db or postgresql://...)."
            ) from None

    def get(self, model_hash: str, candidate: Candidate, context_hash: str, env_hash: str) -> Measurement | None:
        with Session(self.engine) as s:
            row = s.scalars(_by_key(model_hash, candidate, context_hash, env_hash)).first()
            if row is None:
                return None
            return Measurement(row.status, row.metrics, row.error, row.notes, row.wall_s)

    def put(
        self,
        model_hash: str,
        candidate: Candidate,
        context_hash: str,
        env: dict[str, Any],
        env_hash: str,
        m: Measurement,
    ) -> None:
        """Insert, or replace the stored measurement with the same key (a deliberate re-measure)."""
        values = dict(
            model_hash=model_hash,
            candidate_id=candidate.id,
            context_hash=context_hash,
            env_hash=env_hash,
            candidate=candidate.to_dict(),
            status=m.status,
            error=m.error,
            metrics=json.loads(json.dumps(m.metrics, default=float)),
            notes=list(m.notes),
            env=env,
            wall_s=m.wall_s,
            created_at=dt.datetime.now(dt.UTC),
        )
        with Session(self.engine) as s:
            try:
                s.add(MeasurementRow(**values))
                s.commit()
                return
            except IntegrityError:
                s.rollback()
            row = s.scalars(_by_key(model_hash, candidate, context_hash, env_hash)).one()
            for k, v in values.items():
                setattr(row, k, v)
            s.commit()

    def count(self, model_hash: str | None = None) -> int:
        with Session(self.engine) as s:
            q = select(func.count(MeasurementRow.id))
            if model_hash:
                q = q.where(MeasurementRow.model_hash == model_hash)
            return int(s.scalar(q) or 0)

    def put_model(self, model_hash: str, info: dict[str, Any]) -> None:
        """Record (or refresh) a model's graph description, read by the predictor."""
        with Session(self.engine) as s:
            s.merge(ModelRow(model_hash=model_hash, info=json.loads(json.dumps(info, default=float))))
            s.commit()

    def models(self) -> dict[str, dict[str, Any]]:
        with Session(self.engine) as s:
            return {r.model_hash: r.info for r in s.scalars(select(ModelRow))}

    def ok_rows(self) -> list[dict[str, Any]]:
        """Every successful measurement: model hash, candidate, metrics, environment."""
        with Session(self.engine) as s:
            rows = s.scalars(select(MeasurementRow).where(MeasurementRow.status == "ok"))
            return [
                {"model_hash": r.model_hash, "candidate": r.candidate, "metrics": r.metrics, "env": r.env} for r in rows
            ]

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; a killed writer loses nothing
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
