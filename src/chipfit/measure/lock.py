"""The measurement lock: one candidate at a time is measured on a set of cores.

Two runs that measure on the same cores at once each time every candidate under the other's load. A run takes a
file lock (``fcntl.flock``) named after the cores its workers may run on — this process's affinity, which the
kernel already narrows to its cgroup's cpuset, since workers inherit it — and this machine's boot, in
``$CHIPFIT_HOME/locks/cpus-<hash>.lock``, and holds it while a candidate is measured. A second run on the same
cores waits for it (and says so); runs pinned to disjoint cores (several measurement nodes on one machine) take
different locks and never wait for each other. The lock is the kernel's: it goes with the process that holds
it, a ``kill -9`` included, so a dead run never blocks a live one.

A run that has waited ``wait_s`` measures anyway, and the measurement records that it was taken under another
run's load (:data:`CONCURRENT_LOAD`): it is not a clean measurement, and a later run measures it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chipfit.fsutil import machine_id

__all__ = ["CONCURRENT_LOAD", "LockOutcome", "cpu_set", "lock_path", "measurement_lock"]

log = logging.getLogger("chipfit")

CONCURRENT_LOAD = "concurrent_load"  # the metric that marks a measurement taken while another run measured


def cpu_set() -> tuple[int, ...]:
    """The cores this process (and so each worker it starts) may run on: its affinity, which reflects its
    cgroup's cpuset; every core where the platform does not report affinity."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        with contextlib.suppress(OSError):
            return tuple(sorted(getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def _ranges(cpus: Iterable[int]) -> str:
    """0,1,2,5 -> "0-2,5"."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def lock_path(home: Path, cpus: Iterable[int]) -> Path:
    """The lock file of the core set ``cpus`` of this machine under ``home``."""
    key = f"{machine_id()}|{_ranges(cpus)}"
    return home / "locks" / f"cpus-{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"


@dataclass
class LockOutcome:
    """How the lock went: ``held`` (measure clean), or not after waiting ``waited_s`` for ``holder``."""

    held: bool
    waited_s: float
    cpus: str
    holder: str = ""

    @property
    def note(self) -> str | None:
        """The measurement's note when it was taken without the lock; None when it was held."""
        if self.held:
            return None
        who = f" ({self.holder})" if self.holder else ""
        return (
            f"measured under concurrent load: another chipfit run{who} was measuring on the same cores "
            f"(CPUs {self.cpus}) and did not release them within {self.waited_s:.0f}s; these timings are not clean"
        )


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, json.JSONDecodeError):
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']}, {info.get('what', '')}".rstrip(", ")
    return ""


def _record_holder(fd: int, what: str) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode(), 0)


class _Waiter:
    """A blocking ``flock`` in a thread, so that the wait has a bound and the kernel wakes the waiter the moment
    the holder lets go (a polling waiter could lose every time to a holder that takes the lock again at once)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.done, self.mu = fd, threading.Event(), threading.Lock()
        self.acquired = self.abandoned = False
        threading.Thread(target=self._run, name="chipfit-measurement-lock", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            taken = True
        except OSError:
            taken = False
        with self.mu:
            if self.abandoned:  # the run went on without it: the fd is this thread's to close
                os.close(self.fd)
                return
            self.acquired = taken
            self.done.set()

    def wait(self, timeout_s: float) -> bool:
        """True when the lock was taken within ``timeout_s``. Otherwise, while the thread still waits, it is
        abandoned and closes the fd when its wait ends (:attr:`abandoned`); after a failed ``flock`` it is not."""
        self.done.wait(timeout_s)
        with self.mu:
            if not self.done.is_set():
                self.abandoned = True
            return self.acquired


@contextlib.contextmanager
def measurement_lock(
    home: Path, cpus: Iterable[int] | None = None, wait_s: float = 600.0, what: str = ""
) -> Iterator[LockOutcome]:
    """Hold the measurement lock of ``cpus`` (default: :func:`cpu_set`) for the block. When another run holds
    it, log that and wait for it, at most ``wait_s`` seconds; then run the block anyway, with an outcome whose
    ``held`` is False (record its :attr:`LockOutcome.note`). ``what`` tells a waiting run who holds it."""
    cores = tuple(sorted(set(cpus if cpus is not None else cpu_set())))
    path = lock_path(home, cores)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    owned = True  # whether this function still owns fd (an abandoned waiter owns it afterwards)
    outcome = LockOutcome(held=True, waited_s=0.0, cpus=_ranges(cores))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            log.warning(
                "chipfit: waiting for another run measuring on CPUs %s%s (at most %.0fs; lock %s)",
                outcome.cpus,
                f" ({holder})" if holder else "",
                wait_s,
                path,
            )
            start = time.monotonic()
            waiter = _Waiter(fd)
            got = waiter.wait(wait_s)
            outcome.waited_s = time.monotonic() - start
            owned = not waiter.abandoned
            if not got:
                outcome.held, outcome.holder = False, holder
                log.warning(
                    "chipfit: CPUs %s still busy after %.0fs; measuring anyway, recorded as under concurrent load",
                    outcome.cpus,
                    outcome.waited_s,
                )
        if outcome.held:
            _record_holder(fd, what)
        yield outcome
    finally:
        if owned:
            os.close(fd)  # closing the file lets the lock go
