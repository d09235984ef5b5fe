"""ONNX Runtime (CPU here; GPU execution providers come with the GPU issue). onnxruntime is imported here,
in passes that use ONNX Runtime's own tools, and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["LEVELS", "OnnxRuntimeBackend", "backend", "thread_choices"]

LEVELS = ("disable", "basic", "extended", "all")
_PROVIDERS = {"cpu": "CPUExecutionProvider"}


def thread_choices(cpus: int) -> list[int]:
    """1, 2, 4, ... up to the CPU quota, and the quota itself."""
    out, t = [], 1
    while t < cpus:
        out.append(t)
        t *= 2
    return sorted({*out, cpus})


def session_options(options: Mapping[str, Any]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    level = options.get("graph_optimization_level")
    if level is not None:
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
    if "intra_op_num_threads" in options:
        so.intra_op_num_threads = int(options["intra_op_num_threads"])
    if "inter_op_num_threads" in options:
        so.inter_op_num_threads = int(options["inter_op_num_threads"])
    if options.get("execution_mode") == "parallel":
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    elif options.get("execution_mode") == "sequential":
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


class OrtExecutable:
    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(None, dict(feeds)))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "float16", "int8"), dynamic_shapes=True)

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed: pip install onnxruntime"
        return None

    def version(self) -> str | None:
        import onnxruntime

        return str(onnxruntime.__version__)

    def initialize(self) -> None:
        """Create ONNX Runtime's process-wide environment with a one-node session, so that memory measured
        afterwards belongs to the model, not to the runtime's first start."""
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "init",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> OrtExecutable:
        import onnxruntime as ort

        if target not in _PROVIDERS:
            raise ValueError(f"onnxruntime backend: target '{target}' is not supported here (supported: cpu)")
        session = ort.InferenceSession(str(model_path), session_options(options), providers=[_PROVIDERS[target]])
        return OrtExecutable(session)

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """The model as given (no graph optimization), ORT's levels applied offline, × threads × mode."""
        variants: list[list[dict[str, Any]]] = [[]]
        variants += [[{"name": "ort_graph_opt", "params": {"level": lvl}}] for lvl in LEVELS[1:]]
        options = []
        for threads in thread_choices(cpus):
            for mode in ("sequential", "parallel"):
                opt: dict[str, Any] = {
                    "graph_optimization_level": "disable",
                    "intra_op_num_threads": threads,
                    "execution_mode": mode,
                }
                if mode == "parallel":
                    opt["inter_op_num_threads"] = max(1, cpus // threads)
                options.append(opt)
        return OptionSet(variants=variants, options=options, reference_options={})


backend = OnnxRuntimeBackend()
