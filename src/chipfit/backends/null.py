"""The null backend: ONNX's own reference interpreter (``onnx.reference``), pure Python, no hardware and no
runtime library beyond ``onnx``. It lets every pipeline run — and the conformance kit check itself — on any
machine. It is slow by design; ``fit`` never measures it unless asked (``--backends null``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["NullBackend", "backend"]


class NullExecutable:
    def __init__(self, evaluator: Any, input_names: list[str], output_names: list[str]) -> None:
        self._ev = evaluator
        self.input_names = input_names
        self.output_names = output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._ev.run(None, dict(feeds))]

    def close(self) -> None:
        self._ev = None


class NullBackend:
    name = "null"
    # no int8: the reference interpreter runs QuantizeLinear only from opset 19
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32",), dynamic_shapes=True)

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str | None:
        import onnx

        return f"onnx.reference {onnx.__version__}"

    def devices(self) -> list[str]:
        return ["cpu"]

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> NullExecutable:
        import onnx
        from onnx.reference import ReferenceEvaluator

        if target != "cpu":
            raise ValueError(f"null backend: target '{target}' is not supported (supported: cpu)")
        proto = onnx.load(str(model_path))
        unknown = _unsupported_ops(proto)
        if unknown:
            raise NotImplementedError(f"null backend: unsupported operator(s) {', '.join(unknown)}")
        ev = ReferenceEvaluator(proto)
        inits = {i.name for i in proto.graph.initializer}
        inputs = [i.name for i in proto.graph.input if i.name not in inits]
        return NullExecutable(ev, inputs, [o.name for o in proto.graph.output])

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        return OptionSet(variants=[[]], options=[{}], reference_options=None)


def _unsupported_ops(proto: Any) -> list[str]:
    """Operators outside the ONNX and ONNX-ML domains the reference interpreter implements."""
    from onnx.reference.ops import load_op

    out = []
    for node in proto.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx", "ai.onnx.ml"):
            out.append(f"{domain}::{node.op_type}")
            continue
        try:
            load_op(domain, node.op_type)
        except Exception:
            out.append(node.op_type)
    return sorted(set(out))


backend = NullBackend()
