"""The job process: ``python -m chipfit.server.runner --data-dir DIR --job ID`` (started by the local worker,
``jobs.JobWorker``; the database URL comes in ``$CHIPFIT_SERVER_STORE``, never on the command line).

It runs the job's fit (``chipfit.fit``), recommend (``chipfit.recommend``) or farm fit (``chipfit.farm.fit``) on
the server's results store, so each measurement is stored as it is taken (a rerun after a crash reuses it). Each
finished candidate becomes an event (what ``GET /api/jobs/ID/events`` streams) and moves the job's progress; a
candidate measured here is charged at once: its device time × the job's $/hour, to the job and to the team.

Quota stop: once the team's spend reaches its quota, the job's time budget is declared spent (the fit's injected
clock jumps past it): the candidate being measured finishes and is stored, the rest are listed as skipped, and
the fit selects and delivers from what was measured; the job ends ``stopped_by_quota``. A job without a time
budget (its quota set after it was queued) stops before its next candidate instead, with the candidates measured
so far in its events.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from chipfit.errors import ChipfitError
from chipfit.server.db import Database, DataRow, JobRow, ModelRecordRow, TeamRow
from chipfit.server.jobs import JobRequest, add_event, finish_job

__all__ = ["QuotaMeter", "main", "run_job"]

_JUMP_S = 1e12  # what the budget clock adds once the quota is spent: any time budget is then over


class QuotaStop(Exception):
    """Raised from the search's callback to stop a job that has no time budget to declare spent."""


class QuotaMeter:
    """Charges a job's measurements to the job and its team, and says when the team's quota is spent."""

    def __init__(self, db: Database, job_id: str, team_id: str, usd_per_hour: float) -> None:
        self.db, self.job_id, self.team_id, self.usd_per_hour = db, job_id, team_id, usd_per_hour
        self.stopped = False
        self.charged_usd = 0.0

    def charge(self, device_s: float) -> None:
        usd = max(0.0, device_s) / 3600.0 * self.usd_per_hour
        self.charged_usd += usd
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == self.job_id).values(spend_usd=JobRow.spend_usd + usd))
            s.execute(update(TeamRow).where(TeamRow.id == self.team_id).values(spent_usd=TeamRow.spent_usd + usd))
            s.commit()
            quota, spent = s.execute(
                select(TeamRow.quota_usd, TeamRow.spent_usd).where(TeamRow.id == self.team_id)
            ).one()
        if quota is not None and spent >= quota and not self.stopped:
            self.stopped = True
            add_event(self.db, self.job_id, "state", {"state": "stopping", "reason": f"quota ${quota:.4g} spent"})

    def clock(self) -> float:
        """The fit's time-budget clock: real time, or past any budget once the quota is spent."""
        return time.monotonic() + (_JUMP_S if self.stopped else 0.0)


def _progress(db: Database, job_id: str, done: int, total: int) -> None:
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(done=done, total=total))
        s.commit()


def _callback(db: Database, job_id: str, meter: QuotaMeter, has_budget: bool) -> Any:
    def callback(event: str, candidate: Any, result: Any, index: int, total: int) -> None:
        if event == "start":
            if meter.stopped and not has_budget:
                raise QuotaStop
            _progress(db, job_id, index, total)
            return
        if result is None:
            return
        if result.source == "measured":
            meter.charge(result.measurement.wall_s)
        _progress(db, job_id, index + 1, total)
        if result.source != "skipped":
            add_event(db, job_id, "candidate", {"index": index, "total": total, **result.to_dict()})

    return callback


def _space_settings(req: JobRequest, meter: QuotaMeter) -> tuple[Any, Any]:
    from chipfit.measure.stats import TimingPolicy
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.space import SpaceOptions

    sp = req.space
    given: dict[str, Any] = {
        "backends": tuple(req.backends) if req.backends else None,
        "batch_sizes": tuple(sp.batch_sizes) if sp.batch_sizes else None,
        "threads": tuple(sp.threads) if sp.threads else None,
        "opt_levels": tuple(sp.opt_levels) if sp.opt_levels is not None else None,
        "execution_modes": tuple(sp.execution_modes) if sp.execution_modes else None,
        "passes": tuple(sp.passes) if sp.passes is not None else None,
    }
    space = SpaceOptions(**{k: v for k, v in given.items() if v is not None or k == "backends"})
    ms = req.measure
    settings = MeasureSettings(
        timing=TimingPolicy(max_time_s=ms.measure_time),
        timeout_s=ms.timeout,
        eval_limit=ms.eval_samples,
        batch_sweep_top=ms.batch_sweep_top,
        predict=ms.predict,
        clock=meter.clock,
    )
    return space, settings


def run_job(db: Database, data_dir: Path, job_id: str, farm: str | None = None) -> str:
    """Run the job; returns its final state (also written to its row)."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        if row is None or row.state != "running":
            return row.state if row else "missing"
        model_path = Path(s.scalars(select(ModelRecordRow.path).where(ModelRecordRow.id == row.model_id)).one())
        data_path = Path(s.scalars(select(DataRow.path).where(DataRow.id == row.data_id)).one())
        team_id, usd_per_hour = row.team_id, row.usd_per_hour
        req = JobRequest.model_validate(row.request)
    home = data_dir / "home"
    out = data_dir / "jobs" / job_id / "out"
    shutil.rmtree(out, ignore_errors=True)  # a rerun delivers anew (its measurements are reused from the store)
    meter = QuotaMeter(db, job_id, team_id, usd_per_hour)
    has_budget = req.spec.get("time_budget") is not None
    space, settings = _space_settings(req, meter)
    callback = _callback(db, job_id, meter, has_budget)
    common: dict[str, Any] = {"space": space, "settings": settings, "store": db.store, "home": home}
    try:
        if farm is not None and req.kind == "fit":
            result = _farm_fit(db, job_id, model_path, data_path, req, farm, out, meter, common)
        elif req.kind == "fit":
            from chipfit.pipeline import fit

            result = fit(model_path, data_path, req.spec, out=out, callback=callback, progress=False, **common)
        else:
            result = _recommend(db, job_id, model_path, data_path, req, farm, out, callback, common)
    except QuotaStop:
        finish_job(db, job_id, "stopped_by_quota", error="the team's quota was spent: candidates measured so far "
                   "are in the job's events")  # fmt: skip
        return "stopped_by_quota"
    except ChipfitError as exc:
        finish_job(db, job_id, "failed", error=str(exc))
        return "failed"
    payload = result.to_dict()
    state = "stopped_by_quota" if meter.stopped else "done"
    if meter.stopped:
        payload.setdefault("notes", []).append(
            f"stopped by the team's quota after ${meter.charged_usd:.4g} in this job: candidates not measured by "
            "then are listed as skipped (their reason names the time budget, declared spent)"
        )
    finish_job(db, job_id, state, result=_jsonable(payload))
    return state


def _farm_fit(
    db: Database, job_id: str, model: Path, data: Path, req: JobRequest, farm: str, out: Path,
    meter: QuotaMeter, common: dict[str, Any],
) -> Any:  # fmt: skip
    """A fit on the farm: each target measured on its nodes; charged per target at its catalogue price."""
    from chipfit.farm.fit import farm_fit
    from chipfit.hardware.catalog import load_catalog

    def line(text: str) -> None:
        add_event(db, job_id, "line", {"text": text})

    from chipfit.spec import load_spec

    result = farm_fit(
        model, data, load_spec(None, **req.spec), address=farm, targets=req.targets, out=out, progress=line, **common
    )
    cat = load_catalog()
    for name, tr in result.targets.items():
        price = cat[name].usd_per_hour if name in cat else meter.usd_per_hour
        for r in tr.fit.candidates:
            if r.source == "measured":
                meter.usd_per_hour = price
                meter.charge(r.measurement.wall_s)
            if r.source != "skipped":
                add_event(db, job_id, "candidate", {"farm_target": name, **r.to_dict()})
    return result


def _recommend(
    db: Database, job_id: str, model: Path, data: Path, req: JobRequest, farm: str | None, out: Path,
    callback: Any, common: dict[str, Any],
) -> Any:  # fmt: skip
    from chipfit.recommend import recommend

    spec = dict(req.spec)
    objective = spec.pop("objective", None) or "cost"
    min_throughput = spec.pop("min_throughput", None)

    def line(text: str) -> None:
        add_event(db, job_id, "line", {"text": text})

    fit_kwargs = {**common, "callback": callback, "progress": False, "out": out}
    return recommend(
        model, data, targets=tuple(req.targets or ()), min_throughput=min_throughput, objective=objective,
        fit_kwargs=fit_kwargs, progress=line, farm=farm, **spec,
    )  # fmt: skip


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def _wait_for_job(data_dir: Path, preload_backends: bool) -> str:
    """``--wait``: import what a job needs (the pipeline, and each backend's library, as the fit's space asks
    which backends run here), then read its id from stdin; from then on write to the job's log."""
    import chipfit.pipeline
    import chipfit.recommend  # noqa: F401
    from chipfit.backends import available_backends

    if preload_backends:
        with contextlib.suppress(Exception):  # imports every backend's library (TVM brings torch: seconds)
            available_backends()
    job_id = sys.stdin.readline().strip()
    if not job_id or not job_id.isalnum():
        raise SystemExit(0)  # the server stopped (stdin closed) before giving a job
    folder = data_dir / "jobs" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    log = os.open(folder / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return job_id


def main(argv: list[str] | None = None) -> int:
    from chipfit.measure import lifetime

    lifetime.watch()  # a server killed with -9 takes its job along: the restarted server runs it again
    parser = argparse.ArgumentParser(prog="python -m chipfit.server.runner")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--job", default=None, help="the job's id (else --wait: read it from stdin)")
    parser.add_argument("--wait", action="store_true", help="import first, then read the job's id from stdin")
    parser.add_argument("--farm", default=None)
    parser.add_argument("--preload-backends", action="store_true", help="with --wait: import every backend too")
    args = parser.parse_args(argv)
    url = os.environ.get("CHIPFIT_SERVER_STORE") or f"sqlite:///{args.data_dir / 'chipfit.db'}"
    job_id = args.job or _wait_for_job(args.data_dir, args.preload_backends)
    db = Database(url)
    try:
        run_job(db, args.data_dir, job_id, args.farm)
    except Exception as exc:  # anything unexpected still ends the job, with its reason
        traceback.print_exc()
        finish_job(db, job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
