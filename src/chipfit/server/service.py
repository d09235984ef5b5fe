"""The team service: the one object the API routes and the dashboard's pages read and write through. Every
method that takes a ``team`` sees only that team's rows: another team's id is answered as unknown
(:class:`~chipfit.server.errors.NotFound`, 404)."""

from __future__ import annotations

import json
import secrets
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update

from chipfit.errors import ChipfitError
from chipfit.server.auth import hash_secret, load_key, new_secret, split_token
from chipfit.server.config import ServerConfig
from chipfit.server.db import Database, DataRow, EventRow, JobRow, ModelRecordRow, TeamRow, now
from chipfit.server.errors import Conflict, Invalid, NotFound
from chipfit.server.jobs import JobRequest, add_event, finish_job
from chipfit.server.quota import Pricing, check_quota, farm_pricing, job_bound_usd, price_of
from chipfit.server.records import (
    DataRecord,
    Event,
    Job,
    ModelRecord,
    Team,
    data_of,
    job_of,
    model_of,
    team_of,
)
from chipfit.server.uploads import SavedFile, Upload, save_upload, store_data, store_model

__all__ = ["TEAM_TTL_S", "DataRecord", "Event", "Job", "ModelRecord", "ServerService", "Team"]

TEAM_TTL_S = 1.0


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


class ServerService:
    """Teams, uploads, jobs and usage over the database of ``config``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = load_key(config.key_path)
        self.db = Database(config.url)
        self._finished: dict[str, tuple[str, bytes]] = {}
        self._teams: dict[str, tuple[Team, float]] = {}  # team id -> (team, when read): see cached_team

    def close(self) -> None:
        self.db.close()

    # teams (the administrator's CLI) ------------------------------------------------------------------------
    def create_team(self, name: str, quota_usd: float | None = None) -> tuple[Team, str]:
        """A new team and its token (shown once: only its HMAC is kept)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise Invalid(f"A team name must be 1 to 100 characters; got {name!r}.")
        secret = new_secret()
        row = TeamRow(id=_new_id("t"), name=name, token_hash=hash_secret(self.key, secret), quota_usd=quota_usd,
                      spent_usd=0.0, created_at=now())  # fmt: skip
        with self.db.session() as s:
            if s.scalar(select(TeamRow.id).where(TeamRow.name == name)):
                raise Conflict(f"A team named {name!r} exists already: pick another name, or rotate-token its token.")
            s.add(row)
            s.commit()
        return team_of(row), f"{row.id}.{secret}"

    def list_teams(self) -> list[Team]:
        with self.db.session() as s:
            return [team_of(r) for r in s.scalars(select(TeamRow).order_by(TeamRow.created_at))]

    def team_by_id(self, team_id: str) -> Team | None:
        with self.db.session() as s:
            row = s.get(TeamRow, team_id)
            return team_of(row) if row else None

    def team_by_name(self, name: str) -> Team:
        with self.db.session() as s:
            row = s.scalar(select(TeamRow).where((TeamRow.name == name) | (TeamRow.id == name)))
        if row is None:
            raise NotFound(f"No team named {name!r}: see `chipfit server team list`.")
        return team_of(row)

    def set_quota(self, name: str, quota_usd: float | None) -> Team:
        team = self.team_by_name(name)
        with self.db.session() as s:
            s.execute(update(TeamRow).where(TeamRow.id == team.id).values(quota_usd=quota_usd))
            s.commit()
        self._teams.pop(team.id, None)
        return self.team_by_name(team.id)

    def rotate_token(self, name: str) -> str:
        """A new token for the team; the old one (and every session made with it) stops working."""
        team = self.team_by_name(name)
        secret = new_secret()
        with self.db.session() as s:
            s.execute(update(TeamRow).where(TeamRow.id == team.id).values(token_hash=hash_secret(self.key, secret)))
            s.commit()
        self._teams.pop(team.id, None)
        return f"{team.id}.{secret}"

    def cached_team(self, team_id: str) -> Team | None:
        """``team_by_id`` for authenticating requests, read from the database at most every ``TEAM_TTL_S``
        seconds per team (a status poll then costs no team query). A token rotated or a quota set by this process
        takes effect at once; by another process (the CLI), within ``TEAM_TTL_S``."""
        hit = self._teams.get(team_id)
        t = time.monotonic()
        if hit is not None and t - hit[1] < TEAM_TTL_S:
            return hit[0]
        team = self.team_by_id(team_id)
        if team is not None:
            if len(self._teams) >= 4096:
                self._teams.clear()
            self._teams[team_id] = (team, t)
        return team

    def team_for_token(self, token: str) -> Team | None:
        import hmac

        parts = split_token(token)
        if parts is None:
            return None
        team = self.cached_team(parts[0])
        if team is None or not hmac.compare_digest(team.token_hash, hash_secret(self.key, parts[1])):
            return None
        return team

    # models and data ---------------------------------------------------------------------------------------
    def list_models(self, team: Team) -> list[ModelRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(ModelRecordRow).where(ModelRecordRow.team_id == team.id)
                             .order_by(ModelRecordRow.created_at.desc()))  # fmt: skip
            return [model_of(r) for r in rows]

    def _owned(self, table: type[Any], row_id: str, team: Team, missing: str) -> Any:
        """``table``'s row ``row_id`` when it belongs to ``team``; else 404 with ``missing`` (another team's id
        answers exactly as an unknown one: a team cannot tell them apart). The one place of team isolation."""
        with self.db.session() as s:
            row = s.get(table, row_id)
        if row is None or row.team_id != team.id:
            raise NotFound(missing)
        return row

    def get_model(self, team: Team, model_id: str) -> ModelRecord:
        missing = f"No model {model_id!r} in team {team.name!r}: see GET /api/models."
        return model_of(self._owned(ModelRecordRow, model_id, team, missing))

    def add_model(self, team: Team, upload: Upload | Sequence[Upload]) -> ModelRecord:
        """Store an uploaded model (one .onnx with its external data files, or a .pt2), deduplicated per team."""
        uploads = [upload] if not isinstance(upload, Sequence) else list(upload)
        tmp = self.config.data_dir / "tmp"
        saved: list[SavedFile] = []
        try:
            for u in uploads:
                saved.append(save_upload(u, tmp, self.config.max_upload_bytes - sum(f.size for f in saved)))
            model, name = store_model(saved, self.config.data_dir / "models", self.config.home)
        finally:
            for f in saved:
                f.path.unlink(missing_ok=True)
        summary = model.summary()
        info = {k: summary[k] for k in ("inputs", "outputs", "opset", "dynamic_batch", "size_bytes")}
        with self.db.session() as s:
            row = s.scalar(select(ModelRecordRow).where(ModelRecordRow.team_id == team.id,
                                                        ModelRecordRow.sha256 == model.sha256))  # fmt: skip
            if row is not None:
                return model_of(row)
            row = ModelRecordRow(id=_new_id("m"), team_id=team.id, name=name, sha256=model.sha256,
                                 path=str(model.path), info=info, created_at=now())  # fmt: skip
            s.add(row)
            s.commit()
            return model_of(row)

    def add_data(self, team: Team, model_id: str, upload: Upload) -> DataRecord:
        """Store an evaluation set for one of the team's models, checked against the model as ``fit`` checks it."""
        from chipfit.model import load_model

        record = self.get_model(team, model_id)
        saved = save_upload(upload, self.config.data_dir / "tmp", self.config.max_upload_bytes)
        try:
            path, info = store_data(saved, self.config.data_dir / "data", load_model(record.path))
        finally:
            saved.path.unlink(missing_ok=True)
        with self.db.session() as s:
            row = s.scalar(select(DataRow).where(DataRow.model_id == model_id, DataRow.sha256 == saved.sha256))
            if row is None:
                row = DataRow(id=_new_id("d"), team_id=team.id, model_id=model_id, name=saved.name,
                              sha256=saved.sha256, path=str(path), info=info, created_at=now())  # fmt: skip
                s.add(row)
                s.commit()
            return data_of(row)

    def list_data(self, team: Team, model_id: str | None = None) -> list[DataRecord]:
        with self.db.session() as s:
            q = select(DataRow).where(DataRow.team_id == team.id)
            if model_id is not None:
                q = q.where(DataRow.model_id == model_id)
            return [data_of(r) for r in s.scalars(q.order_by(DataRow.created_at.desc()))]

    def get_data(self, team: Team, data_id: str) -> tuple[DataRecord, Path]:
        missing = f"No data set {data_id!r} in team {team.name!r}: upload one at POST /api/models/ID/data."
        row = self._owned(DataRow, data_id, team, missing)
        return data_of(row), Path(row.path)

    # jobs ---------------------------------------------------------------------------------------------------
    def pricing(self, request: JobRequest) -> Pricing:
        """Where ``request`` would measure, and at what $/hour."""
        if self.config.farm is not None:
            if not request.targets:
                raise Invalid("This server runs jobs on a farm: name the farm targets to fit for in 'targets'.")
            return farm_pricing(request.targets)
        name, price, basis = price_of(self.config.local_target)
        return Pricing((name,), price, basis)

    def submit_job(self, team: Team, request: JobRequest | dict[str, Any]) -> Job:
        """Queue a job after checking its model, data, spec and the team's quota (402 / 422)."""
        from chipfit.spec import load_spec

        try:
            req = request if isinstance(request, JobRequest) else JobRequest.model_validate(request)
        except ValidationError as exc:
            raise Invalid(f"Bad job request: {_pydantic_text(exc)}") from None
        model = self.get_model(team, req.model)
        data, _ = self.get_data(team, req.data)
        if data.model_id != model.id:
            raise Invalid(f"Data set {data.id!r} was uploaded for model {data.model_id!r}, not {model.id!r}.")
        if req.kind == "fit" and req.targets and self.config.farm is None:
            raise Invalid("'targets' needs a farm for a fit (this server measures on its own pool): leave it out.")
        try:
            spec = load_spec(None, **req.spec)
            if req.backends:
                from chipfit.backends import parse_backends

                parse_backends(",".join(req.backends))
        except ChipfitError as exc:
            raise Invalid(f"Bad job spec: {exc}") from None
        pricing = self.pricing(req)
        bound = job_bound_usd(spec.time_budget, pricing)
        row = JobRow(id=_new_id("j"), team_id=team.id, kind=req.kind, model_id=model.id, data_id=data.id,
                     request=req.model_dump(mode="json"), state="queued", done=0, total=0, spend_usd=0.0,
                     bound_usd=bound or 0.0, usd_per_hour=pricing.usd_per_hour, attempts=0,
                     created_at=now())  # fmt: skip
        with self.db.session() as s, s.begin():  # quota check and insert together
            fresh = s.get(TeamRow, team.id, with_for_update=True)
            assert fresh is not None
            check_quota(fresh.quota_usd, fresh.spent_usd, self._held(s, team.id), bound)
            s.add(row)
        add_event(self.db, row.id, "state", {"state": "queued", "price": pricing.basis})
        return job_of(row)

    @staticmethod
    def _held(s: Any, team_id: str) -> float:
        """What the team's queued and running jobs may still spend (their bounds less what they spent)."""
        rows = s.execute(select(JobRow.bound_usd, JobRow.spend_usd)
                         .where(JobRow.team_id == team_id, JobRow.state.in_(("queued", "running"))))  # fmt: skip
        return float(sum(max(0.0, b - sp) for b, sp in rows))

    def list_jobs(self, team: Team, limit: int = 200) -> list[Job]:
        with self.db.session() as s:
            rows = s.scalars(select(JobRow).where(JobRow.team_id == team.id)
                             .order_by(JobRow.created_at.desc()).limit(limit))  # fmt: skip
            return [job_of(r) for r in rows]

    def get_job(self, team: Team, job_id: str) -> Job:
        return job_of(self._owned(JobRow, job_id, team, f"No job {job_id!r} in team {team.name!r}: see GET /api/jobs."))

    def finished_job_json(self, team: Team, job_id: str) -> bytes | None:
        """The kept JSON of a finished job of ``team`` (no database read: safe on the event loop), else None."""
        cached = self._finished.get(job_id)
        return cached[1] if cached is not None and cached[0] == team.id else None

    def job_json(self, team: Team, job_id: str) -> bytes:
        """``get_job(...).to_dict()`` as JSON bytes: what status polls read. A finished job no longer changes, so
        its bytes are kept (the last few hundred) and served without the database."""
        cached = self._finished.get(job_id)
        if cached is not None and cached[0] == team.id:
            return cached[1]
        job = self.get_job(team, job_id)
        body = json.dumps(job.to_dict(), default=str).encode()
        if job.finished:
            if len(self._finished) >= 512:
                self._finished.pop(next(iter(self._finished)))
            self._finished[job_id] = (team.id, body)
        return body

    def job_events(self, team: Team, job_id: str, after: int = 0) -> list[Event]:
        self.get_job(team, job_id)
        with self.db.session() as s:
            rows = s.scalars(select(EventRow).where(EventRow.job_id == job_id, EventRow.id > after)
                             .order_by(EventRow.id))  # fmt: skip
            return [Event(r.id, r.kind, r.data) for r in rows]

    def job_candidates(self, team: Team, job_id: str) -> list[dict[str, Any]]:
        """The job's candidates: the result's when it has one, else each as measured so far (from its events)."""
        job = self.get_job(team, job_id)
        if job.result is not None:
            return list(_result_candidates(job.result))
        return [e.data for e in self.job_events(team, job_id) if e.kind == "candidate"]

    def cancel_job(self, team: Team, job_id: str) -> Job:
        job = self.get_job(team, job_id)
        if job.finished:
            raise Conflict(f"Job {job_id!r} has already ended ({job.state}); nothing to cancel.")
        finish_job(self.db, job_id, "cancelled")
        return self.get_job(team, job_id)

    def usage(self, team: Team) -> dict[str, Any]:
        fresh = self.team_by_id(team.id) or team
        with self.db.session() as s:
            held = self._held(s, team.id)
            jobs = int(s.scalar(select(func.count(JobRow.id)).where(JobRow.team_id == team.id)) or 0)
        quota = fresh.quota_usd
        return {
            "team": fresh.name,
            "spent_usd": fresh.spent_usd,
            "quota_usd": quota,
            "remaining_usd": None if quota is None else max(0.0, quota - fresh.spent_usd),
            "held_usd": held,
            "jobs": jobs,
        }

    def artifact_zip(self, team: Team, job_id: str, target: str | None = None) -> Path:
        """A zip of the job's delivered folder (with a farm or ``recommend``: per target, ``target``)."""
        job = self.get_job(team, job_id)
        out = self.config.data_dir / "jobs" / job.id / "out"
        folders = _artifact_folders(out)
        if not folders:
            raise NotFound(f"Job {job_id!r} ({job.state}) has delivered no artifact: only a job with a winner does.")
        if target is None and len(folders) > 1:
            raise Invalid(f"Job {job_id!r} delivered one artifact per target: add ?target= one of {sorted(folders)}.")
        name = target if target is not None else next(iter(folders))
        if name not in folders:
            raise NotFound(f"Job {job_id!r} has no artifact for target {target!r}: it has {sorted(folders)}.")
        folder = folders[name]
        dest = self.config.data_dir / "jobs" / job.id / f"artifact-{name or 'local'}.zip"
        if not dest.exists() or dest.stat().st_mtime < (folder / "manifest.json").stat().st_mtime:
            tmp = dest.with_suffix(".tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and not p.is_symlink():
                        z.write(p, p.relative_to(folder).as_posix())
            tmp.replace(dest)
        return dest


def _artifact_folders(out: Path) -> dict[str, Path]:
    """'' -> out for a local fit; target -> out/<target> for a farm fit."""
    if (out / "manifest.json").is_file():
        return {"": out}
    if not out.is_dir():
        return {}
    return {p.name: p for p in sorted(out.iterdir()) if (p / "manifest.json").is_file()}


def _result_candidates(result: dict[str, Any]) -> list[dict[str, Any]]:
    if "candidates" in result:
        return list(result["candidates"])
    if "targets" in result and isinstance(result["targets"], dict):  # a farm fit: per target
        return [{**c, "farm_target": t} for t, r in result["targets"].items() for c in r.get("candidates", [])]
    fit = result.get("fit")
    return list(fit.get("candidates", [])) if isinstance(fit, dict) else []


def _pydantic_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
