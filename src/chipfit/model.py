"""Ingest: an ONNX file, a torch.nn.Module with example inputs, or a saved ExportedProgram (.pt2).

Every source ends as a :class:`Model`: an ONNX file on disk (what backends and worker processes read), its
input/output specs, a content hash, and graph statistics from shape inference.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from chipfit.errors import ModelError
from chipfit.graph_stats import GraphStats, compute_stats
from chipfit.onnx_files import onnx_file_hash, onnx_files
from chipfit.workspace import subdir

__all__ = ["Model", "TensorSpec", "load_model", "onnx_file_hash", "onnx_files"]

log = logging.getLogger("chipfit")
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[Dim, ...]  # int: fixed; str: symbolic (dynamic); None: unknown

    @property
    def batch_dynamic(self) -> bool:
        return len(self.shape) > 0 and not isinstance(self.shape[0], int)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class Model:
    """An ONNX model on disk plus what chipfit knows about it."""

    path: Path
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    stats: GraphStats
    source: str
    notes: list[str] = field(default_factory=list)
    torch_module: Any = field(default=None, repr=False)  # kept for the torch backend when given

    @property
    def input_names(self) -> list[str]:
        """The names to feed, in the model's order (as ``runtime.load(...).input_names``)."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The names of the outputs, in the order ``run`` returns them."""
        return [t.name for t in self.outputs]

    @property
    def dynamic_batch(self) -> bool:
        """True when every input's first dimension is symbolic, so batches of any size can run."""
        return bool(self.inputs) and all(t.batch_dynamic for t in self.inputs)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in onnx_files(self.path))

    def proto(self, load_weights: bool = True) -> onnx.ModelProto:
        return onnx.load(str(self.path), load_external_data=load_weights)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "dynamic_batch": self.dynamic_batch,
            "size_bytes": self.size_bytes,
            "stats": self.stats.summary(),
        }


def _tensor_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    try:
        dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type))
    except (KeyError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower()
    dims: list[Dim] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return TensorSpec(vi.name, dtype, tuple(dims))


def _load_onnx(path: Path, source: str, torch_module: Any = None, notes: list[str] | None = None) -> Model:
    if not path.exists():
        raise ModelError(f"Model file '{path}' does not exist. Pass the path of an .onnx or .pt2 file.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(
            f"Model file '{path}' is not a readable ONNX model ({type(exc).__name__}: {exc}). "
            "Re-export it (torch.onnx.export) or check that the file is complete."
        ) from None
    if not proto.graph.node:
        raise ModelError(f"Model file '{path}' holds no graph nodes; it is empty or not an ONNX model.")
    for p in onnx_files(path)[1:]:
        if not p.exists():
            raise ModelError(
                f"Model file '{path}' references external data '{p.name}', which is missing. "
                f"Keep the external data file next to the model (expected at '{p}')."
            )
    try:
        onnx.checker.check_model(str(path))
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"Model file '{path}' fails the ONNX checker: {_first_lines(exc)}") from None
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [_tensor_spec(vi) for vi in proto.graph.input if vi.name not in init_names]
    outputs = [_tensor_spec(vi) for vi in inferred.graph.output]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Model(
        path=path.resolve(),
        sha256=onnx_file_hash(path),
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        stats=compute_stats(inferred),
        source=source,
        notes=notes or [],
        torch_module=torch_module,
    )


def _first_lines(exc: BaseException, n: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:n])


def _store_exported(tmp_onnx: Path, home: Path | None) -> Path:
    """Re-save an exported model as one file (or file + .data when large) under models/<hash>/."""
    proto = onnx.load(str(tmp_onnx), load_external_data=True)
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "model.onnx"
        large = proto.ByteSize() > 1_800_000_000
        onnx.save_model(proto, str(single), save_as_external_data=large, location="model.onnx.data")
        digest = onnx_file_hash(single)
        dest = subdir("models", home) / digest[:16]
        if not (dest / "model.onnx").exists():
            staging = Path(tempfile.mkdtemp(dir=dest.parent))
            for p in onnx_files(single):
                shutil.copy2(p, staging / p.name)
            try:
                staging.rename(dest)
            except OSError:  # another process stored the same model first
                shutil.rmtree(staging, ignore_errors=True)
    program = tmp_onnx.with_suffix(".pt2")  # the torch program, kept for the torch backend
    if program.exists() and not (dest / "model.pt2").exists():
        tmp_copy = dest / f".model.pt2.{os.getpid()}"
        shutil.copy2(program, tmp_copy)
        os.replace(tmp_copy, dest / "model.pt2")
    return dest / "model.onnx"


def load_model(
    source: str | Path | Any,
    example_inputs: tuple[Any, ...] | Any | None = None,
    *,
    input_names: list[str] | None = None,
    home: Path | None = None,
    trust_pickle: bool = False,
) -> Model:
    """Ingest a model from an .onnx file, a .pt2 ExportedProgram, or a torch.nn.Module + example inputs.

    Torch sources are exported to ONNX with a dynamic batch dimension: ``torch.onnx.export(dynamo=True)``
    first and, if that fails, the TorchScript exporter (the reason is kept in ``Model.notes``). A one-row example
    is traced as a two-row copy (torch.export would fix a dimension of size 1) and checked as given.

    A .pt2 whose loading could run code from the file (pickled weights or objects, compiled code, code in its
    shape expressions or guards) is refused with a ModelError unless ``trust_pickle``: pass True only for a
    file from someone you trust, since loading it then runs that code.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix in (".pt2", ".pt", ".pth") and path.exists():
            from chipfit import torch_export

            exported, notes = torch_export.export_saved_program(path, trust_pickle=trust_pickle)
            stored = _store_exported(exported, home)
            shutil.rmtree(exported.parent, ignore_errors=True)
            return _load_onnx(stored, f"exported program {path}", notes=notes)
        if path.exists() and path.is_dir():
            raise ModelError(f"Model path '{path}' is a directory. Pass the .onnx or .pt2 file inside it.")
        return _load_onnx(path, f"onnx file {path}")
    if type(source).__module__.startswith("onnx") and isinstance(source, onnx.ModelProto):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "model.onnx"
            onnx.save_model(source, str(p))
            return _load_onnx(_store_exported(p, home), "onnx ModelProto")
    from chipfit import torch_export

    if not torch_export.is_torch_module(source):
        raise ModelError(
            f"Cannot ingest a {type(source).__name__}: pass an .onnx/.pt2 path, an onnx.ModelProto, "
            "or a torch.nn.Module with example_inputs."
        )
    exported, notes = torch_export.export_module(source, example_inputs, input_names)
    stored = _store_exported(exported, home)
    shutil.rmtree(exported.parent, ignore_errors=True)
    model = _load_onnx(stored, f"torch module {type(source).__name__}", source, notes)
    for note in notes:
        log.warning(note)
    return model
