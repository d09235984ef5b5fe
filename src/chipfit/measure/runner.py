"""Run one ``WorkerJob`` in a fresh worker process with a timeout and a memory cap; classify what happened.

A result file means the worker finished (ok, or failed with the exception's text). No result file means it
died: killed by us after the timeout (``timeout``), or by a signal / nonzero exit (``failed``, with the
signal and the last lines of its stderr; ``oom`` when those lines show an allocation failure).

The worker runs in its own session (so a timeout kills its whole process group) and dies with this process
(``measure.lifetime``): the kernel's parent-death signal on Linux, and a pipe it watches everywhere, so a
``kill -9`` of the run leaves no worker measuring on.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chipfit.measure import lifetime
from chipfit.measure.job import Status, WorkerJob, WorkerProtocolError, WorkerResult
from chipfit.measure.measurement import Measurement, looks_like_oom

__all__ = ["run_isolated", "run_worker"]


def _limit_memory(limit_mb: int | None) -> Any:
    def apply() -> None:
        if limit_mb:
            limit = int(limit_mb) * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-1500:]


def run_isolated(
    job: WorkerJob, workdir: Path, timeout_s: float, memory_limit_mb: int | None, threads: int
) -> Measurement:
    """Measure ``job`` in a worker process; never raises for anything the candidate does."""
    result, wall = run_worker(job, workdir, timeout_s, memory_limit_mb, threads)
    return result.to_measurement(wall)


def run_worker(
    job: WorkerJob, workdir: Path, timeout_s: float, memory_limit_mb: int | None, threads: int
) -> tuple[WorkerResult, float]:
    """Run ``job`` in a worker process: its result (or one that says how the worker died) and the wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, result_file, err_path = workdir / "job.json", workdir / "result.json", workdir / "stderr.txt"
    result_file.unlink(missing_ok=True)
    job_path.write_text(job.to_json())
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[2])  # so plug-ins and an uninstalled tree import
    env["PYTHONPATH"] = os.pathsep.join(p for p in [src_root, *sys.path, env.get("PYTHONPATH", "")] if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    alive_r, alive_w = os.pipe()  # the worker reads end-of-file here when this process dies
    env[lifetime.ALIVE_FD_ENV] = str(alive_r)
    start = time.perf_counter()
    try:
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chipfit.measure.worker", str(job_path), str(result_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                pass_fds=(alive_r,),
                preexec_fn=lifetime.preexec(_limit_memory(memory_limit_mb)),
                start_new_session=True,
            )
            os.close(alive_r)
            alive_r = -1
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
    finally:
        for fd in (alive_r, alive_w):
            if fd >= 0:
                os.close(fd)
    wall = time.perf_counter() - start
    if result_file.exists():
        _kill_group(proc)  # stray children of a finished worker
        try:
            return WorkerResult.from_json(result_file.read_text()), wall
        except WorkerProtocolError as exc:
            return WorkerResult(status="failed", error=str(exc)), wall
    if timed_out:
        return WorkerResult(
            status="timeout", error=f"no result within the {timeout_s:.0f}s timeout; worker killed"
        ), wall
    tail = _tail(err_path)
    code = proc.returncode
    if code is not None and code < 0:
        why = f"worker died from signal {signal.Signals(-code).name}"
        if -code == signal.SIGKILL:
            why += " (killed from outside, e.g. by the kernel's OOM killer)"
    else:
        why = f"worker exited with code {code} without a result"
    status: Status = "oom" if looks_like_oom(tail) else "failed"
    return WorkerResult(status=status, error=f"{why}. stderr: {tail}" if tail else why), wall


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
