"""The job queue: a job's typed request, its rows in the database, and the local worker.

A job is submitted as a :class:`JobRequest` (validated here, stored as JSON in its row: the one typed object that
crosses from the server to the job process, serialised by ``model_dump`` / ``model_validate`` only). The local
worker, a thread of the server, takes the oldest queued job, marks it running and starts its process
(``python -m chipfit.server.runner``: a crash or kill of a job never takes the server down; its measurements
run in chipfit's isolated workers as in any fit). One job at a time: measurements must not share cores. It
watches the job's row: a cancelled job's process group is killed.

Nothing is lost on a restart or a ``kill -9`` of the server: queued jobs stay queued; a job found running (its
process gone, or killed now) is queued again, and its rerun reuses every measurement already stored (the
results store's key), so only what was not measured yet is measured and charged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update

from chipfit.measure import lifetime
from chipfit.server.db import TERMINAL, Database, EventRow, JobRow, now

__all__ = [
    "JobRequest",
    "JobWorker",
    "MeasureRequest",
    "SpaceRequest",
    "add_event",
    "claim_next",
    "finish_job",
    "recover_jobs",
]

log = logging.getLogger("chipfit.server")
WATCH_S = 0.5  # how often a running job's row is read for a cancellation (the server stays off the cores)


class SpaceRequest(BaseModel):
    """The search space, as ``fit``'s flags of the same names (omitted: fit's defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_sizes: list[int] | None = Field(default=None, min_length=1)
    threads: list[int] | None = None
    opt_levels: list[Literal["none", "basic", "extended", "all"]] | None = None
    execution_modes: list[Literal["sequential", "parallel"]] | None = None
    passes: list[Literal["transformer_fusion", "int8_dynamic", "int8_static", "nncf_int8", "fp16"]] | None = None


class MeasureRequest(BaseModel):
    """How each candidate is measured, as ``fit``'s flags of the same names."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    measure_time: float = Field(default=2.0, ge=0.05, le=60)
    timeout: float = Field(default=300.0, ge=1, le=3600)
    eval_samples: int | None = Field(default=None, ge=1)
    predict: bool = True
    batch_sweep_top: int = Field(default=3, ge=1)


class JobRequest(BaseModel):
    """``POST /api/jobs``: what to run. ``spec`` takes the keys of a fit spec (``max_p99_ms``, ``objective``,
    ``time_budget`` ...); ``targets``: for ``recommend`` the catalogue targets to rank (default: all), with a farm
    the farm targets to fit for; ``backends``: the backends to try (default: every available one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["fit", "recommend"] = "fit"
    model: str
    data: str
    spec: dict[str, Any] = Field(default_factory=dict)
    targets: list[str] | None = None
    backends: list[str] | None = None
    space: SpaceRequest = Field(default_factory=SpaceRequest)
    measure: MeasureRequest = Field(default_factory=MeasureRequest)


def add_event(db: Database, job_id: str, kind: str, data: dict[str, Any]) -> None:
    with db.session() as s:
        s.add(EventRow(job_id=job_id, kind=kind, data=data, created_at=now()))
        s.commit()


def claim_next(db: Database) -> JobRow | None:
    """The oldest queued job, marked running (by this caller only: the update checks it is still queued)."""
    with db.session() as s:
        ids = s.scalars(select(JobRow.id).where(JobRow.state == "queued").order_by(JobRow.created_at).limit(5))
        for job_id in list(ids):
            claimed = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="running", started_at=now(), attempts=JobRow.attempts + 1)
            )
            s.commit()
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                return s.get(JobRow, job_id, populate_existing=True)
    return None


def finish_job(db: Database, job_id: str, state: str, **values: Any) -> bool:
    """Set a running (or queued) job's final state; False when it had already ended (e.g. cancelled)."""
    with db.session() as s:
        done = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state.not_in(TERMINAL))
            .values(state=state, finished_at=now(), pid=None, **values)
        )
        s.commit()
        ok = done.rowcount == 1  # type: ignore[attr-defined]
    if ok:
        add_event(db, job_id, "state", {"state": state, **({"error": values["error"]} if values.get("error") else {})})
    return ok


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _is_job_process(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still a job process of this data dir (not a reused pid)."""
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
        return "chipfit.server.runner" in cmd and str(data_dir) in cmd
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def recover_jobs(db: Database, data_dir: Path) -> int:
    """At start: every job left running is queued again (its process, if still alive, killed first)."""
    with db.session() as s:
        rows = list(s.scalars(select(JobRow).where(JobRow.state == "running")))
        for row in rows:
            if row.pid and _is_job_process(row.pid, data_dir):
                _kill_group(row.pid)
            row.state, row.pid = "queued", None
        s.commit()
    for row in rows:
        add_event(db, row.id, "state", {"state": "queued", "note": "server restarted: the job runs again, reusing "
                                         "what it measured"})  # fmt: skip
    return len(rows)


class JobWorker:
    """The local pool: one job at a time, each in its own process.

    The next job's process is started ahead, while the worker is idle: it imports chipfit's pipeline and waits
    for a job id on its stdin, so a job starts measuring without paying the imports (a second or more). It is
    started only when no job runs (importing must not share the cores with a measurement)."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        url: str,
        home: Path,
        farm: str | None = None,
        poll_s: float = 0.2,
        preload_backends: bool = True,
    ) -> None:
        self.db, self.data_dir, self.url, self.home, self.farm, self.poll_s = db, data_dir, url, home, farm, poll_s
        self.preload_backends = preload_backends
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="chipfit-job-worker", daemon=True)
        self.proc: subprocess.Popen[bytes] | None = None  # the job's process while one runs
        self.spare: subprocess.Popen[bytes] | None = None  # the next job's process, waiting for its id

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop taking jobs; a job running now is killed and stays 'running' in the database, so that the next
        start queues it again (as after a crash)."""
        self.stopping.set()
        for proc in (self.proc, self.spare):
            if proc is not None and proc.poll() is None:
                _kill_group(proc.pid)
        self.thread.join(timeout=10)

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.spare is None or self.spare.poll() is not None:
                    self.spare = self.spawn()  # in this thread: the child's death signal follows its life
                job = claim_next(self.db)
                if job is None:
                    self.stopping.wait(self.poll_s)
                    continue
                proc, self.spare = self.spare, None
                self.run(job, proc)
            except Exception:  # the worker must outlive any one job's trouble (a locked database, a bad row)
                log.exception("job worker: unexpected error; going on")
                self.stopping.wait(1.0)

    def spawn(self) -> subprocess.Popen[bytes]:
        """A job process that imports, then waits for its job's id on stdin."""
        cmd = [sys.executable, "-m", "chipfit.server.runner", "--data-dir", str(self.data_dir), "--wait"]
        cmd += ["--farm", self.farm] if self.farm else []
        cmd += ["--preload-backends"] if self.preload_backends else []
        env = {**os.environ, "CHIPFIT_HOME": str(self.home), "CHIPFIT_SERVER_STORE": self.url}
        env.pop(lifetime.ALIVE_FD_ENV, None)  # the job watches its parent pid (and the kernel's death signal)
        (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "jobs" / "runner.log", "ab") as err:  # until it has a job: then the job's log
            return subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=lifetime.preexec(),  # dies with the server: a restart runs its job again
            )

    def run(self, job: JobRow, proc: subprocess.Popen[bytes]) -> None:
        folder = self.data_dir / "jobs" / job.id
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = proc
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job.id).values(pid=proc.pid))
            s.commit()
        add_event(self.db, job.id, "state", {"state": "running", "attempt": job.attempts})
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{job.id}\n".encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died while waiting: its exit status fails the job below
        while True:
            try:
                proc.wait(timeout=WATCH_S)  # returns as soon as the job ends; else a light look at its row
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                return
            with self.db.session() as s:
                state = s.scalar(select(JobRow.state).where(JobRow.id == job.id))
            if state == "cancelled":
                _kill_group(proc.pid)
                proc.wait()
                break
        self.proc = None
        _kill_group(proc.pid)  # the job's measurement workers, if any outlived it
        if proc.returncode != 0:
            log_path = folder / "stderr.log"
            tail = log_path.read_text(errors="replace")[-600:].strip() if log_path.exists() else ""
            finish_job(self.db, job.id, "failed", error=f"the job process exited with {proc.returncode}: {tail}")
