"""ONNX Runtime's graph optimizations (basic / extended / all) applied offline and saved.

The saved model is tied to this ONNX Runtime version and CPU (level ``all`` adds layout-specific nodes), so
it is cached under the environment it was made in and run with online optimization disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from chipfit.passes._graph import is_large
from chipfit.passes.base import PassContext, PassResult

__all__ = ["OrtGraphOpt", "graph_optimization_level", "pass_"]


def graph_optimization_level(level: str) -> Any:
    """ONNX Runtime's enum for a level name (``disable`` / ``basic`` / ``extended`` / ``all``)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise ValueError(f"graph optimization level must be one of {tuple(levels)}; got {level!r}")
    return levels[level]


class OrtGraphOpt:
    name = "ort_graph_opt"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {"level": ("basic", "extended", "all")}

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        import onnxruntime as ort

        level = params.get("level", "all")
        if level not in self.params["level"]:
            raise ValueError(f"ort_graph_opt: level must be one of {self.params['level']}; got {level!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = graph_optimization_level(level)
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(dst)
        if is_large(src):
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        return PassResult(applied=True, notes=[f"ONNX Runtime graph optimization level '{level}' applied offline"])


pass_ = OrtGraphOpt()
