"""Passes, one module per transformation, found by module name; results cached by content.

``apply_passes`` runs a chain of passes on an ONNX file; each step's output is cached under
``variants/<sha256(input hash, pass, params)>/model.onnx`` and written atomically, so concurrent workers
and interrupted runs never see half a file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from chipfit.passes.base import Pass, PassContext, PassResult

__all__ = ["BUILTIN", "Pass", "PassContext", "PassResult", "apply_passes", "get_pass"]

BUILTIN: tuple[str, ...] = (
    "ort_graph_opt",
    "transformer_fusion",
    "attention_canonical",
    "fp16",
    "int8_dynamic",
    "int8_static",
    "nncf_int8",
)


def get_pass(name: str) -> Pass:
    module_name, _, attr = name.partition(":")
    if not attr:
        if name not in BUILTIN:
            raise ValueError(f"Unknown pass '{name}'. Built-in passes: {', '.join(BUILTIN)}.")
        module_name, attr = f"chipfit.passes.{name}", "pass_"
    obj: Any = getattr(importlib.import_module(module_name), attr)
    return obj() if isinstance(obj, type) else obj


def _step_key(input_hash: str, step: dict[str, Any], calib_sha256: str | None) -> str:
    """Content key of one step's output; passes that read calibration data also key on that data."""
    payload_d = {"in": input_hash, "pass": step["name"], "params": step.get("params", {})}
    if getattr(get_pass(step["name"]), "reads_calibration", False):
        payload_d["calib"] = calib_sha256
    payload = json.dumps(payload_d, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def apply_passes(
    model_path: Path, model_hash: str, steps: list[dict[str, Any]], variants_dir: Path, ctx: PassContext
) -> tuple[Path, list[str]]:
    """Apply ``steps`` in order; returns the variant's path and the passes' notes."""
    from chipfit.onnx_files import onnx_files

    path, key, notes = model_path, model_hash, []
    for step in steps:
        key = _step_key(key, step, ctx.calib_sha256)
        dest = variants_dir / key
        out = dest / "model.onnx"
        meta = dest / "pass.json"
        if not meta.exists():
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=variants_dir))
            try:
                result = get_pass(step["name"]).apply(path, staging / "model.onnx", dict(step.get("params", {})), ctx)
                if not result.applied:  # the pass does not apply: the variant is its input, unchanged
                    for p in onnx_files(path):
                        shutil.copy2(p, staging / ("model.onnx" if p == path else p.name))
                (staging / "pass.json").write_text(json.dumps({"step": step, **result.__dict__}))
                staging.rename(dest)
            except OSError:
                if not meta.exists():
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        recorded = json.loads(meta.read_text())
        notes += recorded.get("notes", [])
        path = out
    return path, notes
