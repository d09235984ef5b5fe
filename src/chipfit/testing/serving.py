"""A ``chipfit serve`` process on a free loopback port, ready when constructed — for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["ManualClock", "ServeProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManualClock:
    """A clock that moves only when told: pass it as ``clock=`` to a batcher or scheduler, and ``advance`` it
    (from the test, or from a fake model's run) instead of sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not run backwards: advance({seconds!r}) needs seconds >= 0.")
        self.now += seconds


class ServeProcess:
    """``python -m chipfit serve ARGS --port P``; returns once ``/readyz`` answers 200. With ``capture`` the
    server's stdout and stderr go to a temporary file (never a pipe that nobody drains: an access log under
    load would fill it and block the server), read with ``output()`` at any time and returned by ``stop()``;
    without, its output is discarded."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, capture: bool = True, ready_s: float = 60.0
    ) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile(prefix="chipfit-serve-") if capture else None  # noqa: SIM115
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chipfit", "serve", *args, "--port", str(self.port)],
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.output()
                self._close_log()
                raise RuntimeError(f"server exited with code {self.proc.returncode}: {err}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        err = self.stop()
        raise RuntimeError(f"server did not become ready in {ready_s:g} s: {err}")

    def output(self) -> str:
        """What the server has written to stdout and stderr so far (empty without ``capture``)."""
        if self._log is None:
            return ""
        return os.pread(self._log.fileno(), os.fstat(self._log.fileno()).st_size, 0).decode(errors="replace")

    def stop(self) -> str:
        """Terminate it (kill it if it does not exit in 30 s); what it wrote (empty without ``capture``)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        text = self.output()
        self._close_log()
        return text

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
