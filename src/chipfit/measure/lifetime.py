"""Child processes die with the process that started them, even when it is killed with SIGKILL.

Two mechanisms, because neither alone covers every platform and every way of dying:

- **the kernel** (Linux): ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child, set between fork and exec
  (:func:`preexec`) or first thing in a forked child (:func:`die_with_parent`). The kernel kills the child the
  moment its parent exits; a parent that died before the request was made is caught by checking the parent pid
  right after it.
- **a watch in the child** (every POSIX system): the parent keeps the write end of a pipe and never writes to it;
  the child's daemon thread blocks on the read end (:func:`watch`). The parent's death closes the write end,
  the read returns end-of-file, and the child kills its process group (itself and what it started, when it leads
  one) or itself. Without a pipe, the thread polls ``os.getppid()`` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ALIVE_FD_ENV", "die_with_parent", "preexec", "set_parent_death_signal", "watch"]

ALIVE_FD_ENV = "CHIPFIT_ALIVE_FD"  # names the inherited read end of the parent's pipe in a worker's environment
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    """libc's prctl, loaded in the parent: a child between fork and exec should not dlopen."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; False where it cannot (not Linux)."""
    if _prctl is None:
        return False
    return bool(_prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def die_with_parent(parent_pid: int) -> None:
    """In a child of ``parent_pid``: die with it (the kernel's signal); die now if it is gone already."""
    set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the request: nobody will send the signal
        os.kill(os.getpid(), signal.SIGKILL)


def preexec(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child die with the calling process, then runs
    ``then`` (e.g. a memory limit). Call it in the parent, where it reads the parent's pid."""
    parent = os.getpid()

    def apply() -> None:
        die_with_parent(parent)
        if then is not None:
            then()

    return apply


def _end() -> None:
    """End this process, and its process group when it leads one (a worker started in its own session)."""
    with contextlib.suppress(OSError):
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch_fd(fd: int) -> None:
    while True:
        try:
            if os.read(fd, 1) == b"":  # end of file: every write end is closed, so the parent is gone
                break
        except InterruptedError:
            continue
        except OSError:
            break
    _end()


def _watch_ppid(parent: int, every_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    _end()


def watch(fd: int | None = None, every_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process when its parent dies: at end-of-file on ``fd`` (the read end
    of the parent's pipe; by default the one ``$CHIPFIT_ALIVE_FD`` names), else when ``os.getppid()`` changes
    (polled every ``every_s`` seconds)."""
    if fd is None:
        with contextlib.suppress(KeyError, ValueError):  # taken, so that no process this one starts reads it
            fd = int(os.environ.pop(ALIVE_FD_ENV))
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:  # not open here (a stray variable): watch the parent pid instead
            fd = None
    if fd is not None:
        thread = threading.Thread(target=_watch_fd, args=(fd,), name="chipfit-parent-watch", daemon=True)
    else:
        args = (os.getppid(), every_s)
        thread = threading.Thread(target=_watch_ppid, args=args, name="chipfit-parent-watch", daemon=True)
    thread.start()
    return thread
