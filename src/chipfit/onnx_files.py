"""An ONNX model on disk: the model file and the external-data files it references, and their content hash.

Below ``model`` and ``passes`` (both read it), so that neither depends on the other for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

__all__ = ["onnx_file_hash", "onnx_files"]


def onnx_files(path: Path) -> list[Path]:
    """The model file and every external-data file it references (sorted, deduplicated)."""
    proto = onnx.load(str(path), load_external_data=False)
    extra: set[str] = set()
    for t in all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                extra.add(loc)
    return [path] + [path.parent / loc for loc in sorted(extra)]


def all_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    return tensors


def onnx_file_hash(path: Path) -> str:
    """sha256 over the model file and its external data files, in a fixed order."""
    h = hashlib.sha256()
    for p in onnx_files(path):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
