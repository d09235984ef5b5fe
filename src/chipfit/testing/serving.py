"""A ``chipfit serve`` process on a free loopback port, ready when constructed — for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

__all__ = ["ServeProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``python -m chipfit serve ARGS --port P``; returns once ``/readyz`` answers 200. With ``capture`` the
    server's stderr is kept for ``stop()`` to return (keep its output small: an access log under heavy load
    fills the pipe); without, its output is discarded."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, capture: bool = True, ready_s: float = 60.0
    ) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chipfit", "serve", *args, "--port", str(self.port)],
            stdout=out,
            stderr=out,
            text=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready in {ready_s:g} s")

    def stop(self) -> str:
        """Terminate it; its stderr (empty without ``capture``)."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err or ""
