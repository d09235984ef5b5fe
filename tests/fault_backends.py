"""Deliberately faulty plug-in backends (named 'fault_backends:crash' etc.) for the measurement tests.

They wrap ONNX Runtime and misbehave at a chosen point: kill their own process, hang, exhaust memory, or
raise. The worker process imports them by name, exactly as it would a third-party backend."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet
from chipfit.backends.onnxruntime import backend as ort_backend


class _HangingExecutable:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(3600)
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()


class FaultBackend:
    capabilities = Capabilities()

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"fault_backends:{mode}"

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str | None:
        return "0"

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> Any:
        if self.mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "oom":
            hog = np.ones((1 << 31,), dtype=np.float64)  # 16 GiB: past any test's memory cap
            return hog
        if self.mode == "raise":
            raise ValueError("unsupported operator FancyOp in node 'n7'")
        exe = ort_backend.compile(model_path, target, {"intra_op_num_threads": 1})
        return _HangingExecutable(exe) if self.mode == "hang" else exe

    def option_space(self, model: Any, cpus: int) -> OptionSet:
        return OptionSet(variants=[[]], options=[{"fault": self.mode}], reference_options=None)


crash = FaultBackend("crash")
hang = FaultBackend("hang")
oom = FaultBackend("oom")
broken = FaultBackend("raise")
