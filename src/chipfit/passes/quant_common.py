"""What the int8 passes share: preparing a model for ONNX Runtime's quantizer, and a bounded calibration reader.

ONNX Runtime's quantizer fails on many exported models in shape inference: stale ``value_info`` from the
exporter contradicts what inference derives ("Inferred shape and existing shape differ in dimension 0"), and
tensors behind contrib or unknown-domain ops get no type ("Unable to find data type for weight_name=...").
``prepare`` drops the stale shapes, names every node, and runs ONNX Runtime's own pre-processing (symbolic and
ONNX shape inference), falling back to plain ONNX shape inference; the quantizer is then told the default
tensor type. What still fails is raised with the pass's name and the reason, and recorded as a failed candidate.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.shape_inference import quant_pre_process

from chipfit.passes._graph import is_large, name_nodes

__all__ = ["CalibrationReader", "check_params", "prepare", "quantize_error"]

log = logging.getLogger("chipfit")


def _register_ort_tools_without_torch() -> None:
    """``onnxruntime/tools/__init__.py`` imports torch whenever torch is installed, for PyTorch export helpers
    that quantization never uses; its symbolic shape inference lives in that package, so every int8 pass paid
    ~3 s of torch import per worker process. Register the package without running its ``__init__`` (the
    submodules import as usual); a process that already imported it keeps it as it is."""
    if "onnxruntime.tools" in sys.modules:
        return
    spec = importlib.util.find_spec("onnxruntime.tools")
    if spec is None or not spec.submodule_search_locations:
        return
    sys.modules["onnxruntime.tools"] = importlib.util.module_from_spec(spec)


def check_params(pass_name: str, params: dict[str, Any], allowed: dict[str, tuple[Any, ...]]) -> None:
    for key, value in params.items():
        if key in ("exclude", "nodes"):
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{pass_name}: '{key}' must be a list of node names; got {value!r}")
            continue
        if key not in allowed:
            raise ValueError(f"{pass_name}: unknown parameter '{key}'; known: {', '.join(allowed)}, exclude, nodes")
        if allowed[key] and value not in allowed[key]:
            raise ValueError(f"{pass_name}: '{key}' must be one of {allowed[key]}; got {value!r}")


def prepare(src: Path, workdir: Path) -> tuple[Path, list[str]]:
    """A copy of ``src`` ready for quantization: fresh shapes, named nodes. Returns its path and notes."""
    large = is_large(src)
    model = onnx.load(str(src))
    notes = []
    if len(model.graph.value_info):
        del model.graph.value_info[:]  # the exporter's shapes may contradict inference; derive them again
    if name_nodes(model):
        notes.append("unnamed nodes given names so they can be kept in fp32 by name")
    plain = workdir / "plain.onnx"
    onnx.save_model(model, str(plain), save_as_external_data=large, location="plain.onnx.data")
    out = workdir / "prepared.onnx"
    _register_ort_tools_without_torch()
    try:
        quant_pre_process(
            str(plain),
            str(out),
            skip_optimization=True,  # graph optimization is a pass of its own; keep node names stable here
            auto_merge=True,
            save_as_external_data=large,
            external_data_location="prepared.onnx.data",
        )
        return out, notes
    except Exception as exc:
        notes.append(f"symbolic shape inference failed ({type(exc).__name__}: {str(exc)[:160]}); used ONNX's")
    try:
        onnx.shape_inference.infer_shapes_path(str(plain), str(out))
    except Exception as exc:
        notes.append(f"ONNX shape inference failed too ({type(exc).__name__}); quantizing without shapes")
        return plain, notes
    return out, notes


def quantize_error(pass_name: str, exc: BaseException) -> RuntimeError:
    text = f"{type(exc).__name__}: {exc}"
    hint = ""
    if "Inferred shape and existing shape differ" in text:
        hint = " (the model's recorded shapes contradict shape inference even after clearing them)"
    elif "Unable to find data type" in text:
        hint = " (a tensor's type could not be inferred, e.g. behind an op from another domain)"
    return RuntimeError(f"{pass_name}: ONNX Runtime's quantizer could not quantize this model{hint}: {text[:600]}")


class CalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration batches from the user's data: at most ``limit`` samples, ``batch`` at a time.

    A bounded number of samples keeps calibration memory bounded (histogram methods keep every activation
    of a batch; ONNX Runtime issues #10503, #11020).
    """

    def __init__(self, data: dict[str, np.ndarray], batch: int, limit: int) -> None:
        n = min(len(next(iter(data.values()))), limit)
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [
                {k: np.ascontiguousarray(v[s : s + batch]) for k, v in data.items()}
                for s in range(0, n - batch + 1, batch)
            ]
        )
        self.samples = (n // batch) * batch
        self.batch = batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
