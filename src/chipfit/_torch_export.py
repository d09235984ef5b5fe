"""torch → ONNX export for ingest. torch is imported only here (and in backends/torch.py)."""

from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from chipfit.errors import BackendUnavailableError, ModelError

__all__ = ["export_module", "export_saved_program", "is_torch_module"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("Ingesting a PyTorch model needs torch: pip install 'chipfit[torch]'.") from None
    # the exporter logs one warning per missing torchvision op; chipfit never uses torchvision
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    return torch


def is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    torch = _torch()
    if example_inputs is None:
        raise ModelError(
            "A torch.nn.Module needs example inputs to be exported: load_model(module, example_inputs=(x,))."
        )
    if isinstance(example_inputs, torch.Tensor) or hasattr(example_inputs, "__array__"):
        example_inputs = (example_inputs,)
    return tuple(a if isinstance(a, torch.Tensor) else torch.as_tensor(a) for a in example_inputs)  # numpy too


def _names(module: Any, n: int, input_names: list[str] | None) -> list[str]:
    if input_names:
        if len(input_names) != n:
            raise ModelError(f"input_names has {len(input_names)} names but there are {n} example inputs.")
        return list(input_names)
    try:
        params = [
            p
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        names = [p.name for p in params][:n]
    except (TypeError, ValueError):
        names = []
    return names if len(names) == n else [f"input_{i}" for i in range(n)]


def export_module(module: Any, example_inputs: Any, input_names: list[str] | None) -> tuple[Path, list[str]]:
    """Export with a dynamic batch dimension: dynamo first, then the TorchScript exporter."""
    torch = _torch()
    args = _as_tuple(example_inputs)
    names = _names(module, len(args), input_names)
    module = module.eval()
    out = Path(tempfile.mkdtemp(prefix="chipfit-export-")) / "model.onnx"
    notes: list[str] = []
    batch = torch.export.Dim("batch", min=1, max=65536)
    dyn_shapes = tuple({0: batch} if a.dim() > 0 else None for a in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(out), dynamo=True, input_names=names, dynamic_shapes=dyn_shapes, verbose=False
            )
        _save_program(module, args, dyn_shapes, out, notes)
        return out, notes
    except Exception as exc:  # the dynamo exporter raises many types; the reason is kept
        dynamo_error = _short(exc)
    notes.append(f"torch.onnx.export(dynamo=True) failed ({dynamo_error}); used the TorchScript exporter instead.")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(out),
                dynamo=False,
                input_names=names,
                opset_version=17,
                dynamic_axes={n: {0: "batch"} for n, a in zip(names, args, strict=True) if a.dim() > 0},
            )
    except Exception as exc:
        raise ModelError(
            f"Could not export {type(module).__name__} to ONNX. dynamo exporter: {dynamo_error}. "
            f"TorchScript exporter: {_short(exc)}. Simplify the unsupported operation or export it yourself "
            "and pass the .onnx file."
        ) from None
    _save_program(module, args, dyn_shapes, out, notes)
    return out, notes


def _save_program(module: Any, args: tuple[Any, ...], dyn_shapes: Any, onnx_path: Path, notes: list[str]) -> None:
    """Keep the module as a ``torch.export`` program beside the ONNX file, for the torch backend (eager and
    torch.compile run it in the measurement worker, which cannot receive the Python object)."""
    torch = _torch()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, args, dynamic_shapes=dyn_shapes)
            torch.export.save(ep, str(onnx_path.with_suffix(".pt2")))
    except Exception as exc:
        notes.append(f"torch.export failed ({_short(exc)}); the torch backend cannot run this model.")


def export_saved_program(path: Path) -> tuple[Path, list[str]]:
    """Export a saved ExportedProgram (torch.export.save) to ONNX; its own dynamic shapes are kept."""
    torch = _torch()
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(
            f"Model file '{path}' is not a loadable ExportedProgram ({_short(exc)}). "
            "Save it with torch.export.save(torch.export.export(model, args), path)."
        ) from None
    out = Path(tempfile.mkdtemp(prefix="chipfit-export-")) / "model.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ep, (), str(out), dynamo=True, verbose=False)
    except Exception as exc:
        raise ModelError(f"Could not export the ExportedProgram '{path}' to ONNX: {_short(exc)}.") from None
    shutil.copy2(path, out.with_suffix(".pt2"))
    return out, []


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
