"""A ``chipfit serve`` process on a free loopback port, ready when constructed, and a minimal artifact to serve —
for tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ManualClock", "ServeProcess", "free_port", "minimal_artifact"]


def minimal_artifact(model: Path, out: Path, backend: str = "onnxruntime", **manifest: Any) -> Path:
    """An artifact folder ``out`` as ``chipfit fit`` would write it for ONNX ``model`` on ``backend`` (no
    measurements: pass ``--slo-p99-ms`` to serve it), without measuring anything; ``manifest`` entries
    replace the written ones (a test's tampered manifest)."""
    import onnx
    from onnx import helper

    from chipfit.fsutil import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model, out / "model.onnx")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph

    def spec(vi: Any) -> dict[str, Any]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return {"name": vi.name, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": dims}

    inputs = [spec(vi) for vi in graph.input if vi.name not in {i.name for i in graph.initializer}]
    doc = {
        "format": 1,
        "feasible": True,
        "model": {
            "file": "model.onnx",
            "sha256": {"model.onnx": sha256_file(out / "model.onnx")},
            "source": {
                "inputs": inputs,
                "outputs": [spec(vi) for vi in graph.output],
                "dynamic_batch": all(not isinstance(i["shape"][0], int) for i in inputs),
            },
        },
        "backend": backend,
        "target": "cpu",
        "runtime_options": {"threads": 1},
        **manifest,
    }
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return out


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
