"""The Backend protocol: one runtime (ONNX Runtime, TVM, OpenVINO, torch, ...) behind a small interface.

Core interface — change it with care: every backend module, the measurement worker, the runtime loader and
the conformance kit in ``chipfit.testing`` depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["Backend", "Capabilities", "Executable", "OptionSet"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, stated truthfully (the conformance kit checks it)."""

    devices: tuple[str, ...] = ("cpu",)  # targets ``compile`` accepts: "cpu", "cuda", "tensorrt", ...
    dtypes: tuple[str, ...] = ("float32",)  # tensor types its kernels run (int8: quantized graphs execute)
    dynamic_shapes: bool = True  # one compiled executable runs any batch size
    # compiles for the batch size given as ``options["batch"]`` (the worker passes the candidate's batch);
    # without it, for the model's own (possibly symbolic) shapes
    specializes_batch: bool = False


@dataclass(frozen=True)
class OptionSet:
    """A backend's candidate options for one model: variants (pass chains) × runtime options.

    An option may carry ``"device"`` (e.g. ``"cuda"``): the candidate's target, not a runtime option. An
    option with ``"tune_trials": None`` stands for the run's tuning budget (dropped when there is none)."""

    variants: list[list[dict[str, Any]]] = field(default_factory=list)  # each a list of {"name", "params"}
    options: list[dict[str, Any]] = field(default_factory=list)
    reference_options: dict[str, Any] | None = None  # the backend's plain default session, if it has one
    skip: dict[int, str] = field(default_factory=dict)  # variant index -> why it is not worth measuring here
    option_skip: dict[int, str] = field(default_factory=dict)  # option index -> why it is not measured here
    unsuitable: str | None = None  # why this backend cannot run this model at all (listed, never measured)
    primary: int = 1  # how many leading options every variant is measured with (the rest: for the fastest)


@runtime_checkable
class Executable(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def unavailable_reason(self) -> str | None:
        """None when usable here; otherwise why not and what to install."""
        ...

    def version(self) -> str | None: ...

    def devices(self) -> list[str]:
        """The devices this backend sees here ("cpu", "cuda:0 NVIDIA H100", ...); empty when unavailable."""
        ...

    # Optional methods (looked up with getattr):
    # ``initialize() -> None`` loads the runtime's process-wide state (thread pools, kernels) so that the
    #   worker's memory probe, started after it, sees only what the model adds.
    # ``package(model_path, target, options, dest) -> dict`` writes what a deployment needs beyond the ONNX
    #   file (a compiled library, an exported program) into the artifact folder ``dest`` and returns the
    #   runtime options to record, naming those files relative to ``dest``; ``compile`` accepts them back.

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> Executable:
        """Prepare ``model_path`` (an ONNX file) to run on ``target`` ("cpu", "cuda", ...) with ``options``."""
        ...

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """The variants and runtime options ``fit`` should try for ``model`` on this machine."""
        ...
