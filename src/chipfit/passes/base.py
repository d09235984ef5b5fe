"""The Pass protocol: one model transformation, pure and cached by (input hash, pass, params).

Core interface — change it with care. Passes work on ONNX files (not in-memory protos) so that models over
2 GB, whose weights live in external data, go through the same path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Pass", "PassContext", "PassResult", "QuantizingPass"]


@dataclass
class PassContext:
    """What a pass may read besides the model: calibration data, the machine, a scratch folder."""

    calib_dir: Path | None = None
    calib_sha256: str | None = None  # part of the cache key of passes with ``reads_calibration = True``
    input_names: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    """``applied`` is False when the pass decided it does not apply (the reason is in ``notes``)."""

    applied: bool
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Pass(Protocol):
    name: str
    params: dict[str, tuple[Any, ...]]  # parameter name -> allowed values

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        """Write the transformed model of ``src`` to ``dst``; never modify ``src``."""
        ...


@runtime_checkable
class QuantizingPass(Pass, Protocol):
    """A pass whose nodes can be quantized one by one: what the accuracy-aware mixed-precision search needs.
    Its params accept ``exclude`` (nodes kept fp32) and ``nodes`` (only these quantized)."""

    def quantizable(self, src: Path) -> list[str]:
        """Names of the nodes this pass would quantize in ``src``."""
        ...

    def quantize(self, prepared: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> Any:
        """Quantize a model already prepared for quantization (shapes inferred, nodes named)."""
        ...
