"""torch → ONNX export for ingest. torch is imported only here (and in backends/torch.py).

An export is never trusted as such: :func:`verify_export` runs the torch module and the exported ONNX model
(on ONNX Runtime) on the same inputs (the example inputs, generated ones that take other values and another
batch size, and the evaluation data when there is some) and raises a :class:`ModelError` naming the module and
the largest error when they disagree. The TorchScript exporter records one path through data-dependent Python
control flow (``if x.sum() > 0``); such a model would otherwise be measured and delivered as a different model.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.backends.torch import NO_PROGRAM
from chipfit.errors import BackendUnavailableError, ModelError
from chipfit.pt2_check import TRUST_HINT, load_checked

__all__ = [
    "RTOL",
    "SCALE_ATOL",
    "TRUST_HINT",
    "export_module",
    "export_saved_program",
    "is_torch_module",
    "load_exported_program",
    "verify_export",
]

RTOL = 1e-3  # per element, relative to the module's own output
SCALE_ATOL = 1e-4  # per element, relative to the largest magnitude of that output (float32 reassociation)


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


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[Any]:
    """The module in eval mode for the block, then back in the mode it was in (a user's module, or a trainable
    in the middle of training, must not come back with dropout and batch-norm updates switched off)."""
    was_training = bool(getattr(module, "training", False))
    switched = False
    with contextlib.suppress(NotImplementedError, AttributeError):  # an ExportedProgram's module() has no eval()
        module.eval()
        switched = True
    try:
        yield module
    finally:
        if was_training and switched:
            module.train(True)


def export_module(module: Any, example_inputs: Any, input_names: list[str] | None) -> tuple[Path, list[str]]:
    """Export with a dynamic batch dimension: dynamo first, then the TorchScript exporter; the module's
    training mode is left as it was."""
    with eval_mode(module):
        return _export_module(module, example_inputs, input_names)


def _export_module(module: Any, example_inputs: Any, input_names: list[str] | None) -> tuple[Path, list[str]]:
    torch = _torch()
    args = _as_tuple(example_inputs)
    names = _names(module, len(args), input_names)
    traced_args = _two_rows(torch, module, args)  # what the exporters trace; the checks run on ``args`` too
    out = Path(tempfile.mkdtemp(prefix="chipfit-export-")) / "model.onnx"
    notes: list[str] = []
    batch = torch.export.Dim("batch", min=1, max=65536)
    dyn_shapes = tuple({0: batch} if a.dim() > 0 else None for a in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, traced_args, str(out), dynamo=True, input_names=names, dynamic_shapes=dyn_shapes, verbose=False
            )
    except Exception as exc:  # the dynamo exporter raises many types; the reason is kept
        dynamo_error = _short(exc)
    else:
        verify_export(module, out, args, input_names=names)
        _save_program(module, traced_args, dyn_shapes, out, notes)
        return out, notes
    notes.append(f"torch.onnx.export(dynamo=True) failed ({dynamo_error}); used the TorchScript exporter instead.")
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                module,
                traced_args,
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
    traced = _tracer_warnings(caught)
    if traced:
        notes.append(f"the TorchScript exporter warned: {traced}")
    verify_export(module, out, args, input_names=names, hint=traced)
    _save_program(module, traced_args, dyn_shapes, out, notes)
    return out, notes


def _two_rows(torch: Any, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The example inputs to trace: as given, or a 2-row copy when every batched input has one row.

    torch.export specialises a dimension of size 1 to the constant 1 ("Constraints violated (batch)"), so a
    one-row example would lose the dynamic batch; two copies of the row keep it, and the export is still
    checked on the one-row example itself. A module that cannot run two rows is refused with the fix."""
    batched = [a for a in args if a.dim() > 0]
    if not batched or any(a.shape[0] != 1 for a in batched):
        return args
    two = tuple(a.expand(2, *a.shape[1:]).contiguous() if a.dim() > 0 else a for a in args)
    try:
        with torch.no_grad():
            module(*two)
    except Exception as exc:  # the module's own error, whatever its type
        raise ModelError(
            f"{type(module).__name__} fails on two rows ({_short(exc)}), but chipfit exports models with a dynamic "
            "batch dimension: make forward() accept any number of rows (e.g. x.flatten(1) rather than x.view(-1)), "
            "or export it yourself and pass the .onnx file."
        ) from None
    return two


def _tracer_warnings(caught: list[warnings.WarningMessage]) -> str:
    """The tracer's own warnings (a tensor used as a Python bool or number...), deduplicated, for the notes."""
    seen: list[str] = []
    for w in caught:
        if "Tracer" in type(w.message).__name__ or "trace" in str(w.message).lower():
            text = str(w.message).strip().splitlines()[0][:200]
            if text not in seen:
                seen.append(text)
    return " | ".join(seen[:3])


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
        notes.append(
            f"{NO_PROGRAM}: torch.export could not capture {type(module).__name__} with a dynamic batch "
            f"({_short(exc)}); to measure it with torch, make forward() traceable by torch.export or pass a .pt2 "
            "saved with torch.export.save."
        )


def _archive_reader() -> Any:
    try:
        from torch.export.pt2_archive._package import PT2ArchiveReader
    except ImportError:  # another torch: the archive cannot be checked, so it is refused
        return None
    return PT2ArchiveReader


def load_exported_program(path: Path, *, trust_pickle: bool = False) -> Any:
    """``torch.export.load`` of a user's file, refusing (ModelError) an archive whose loading could run code
    from it unless ``trust_pickle`` (see chipfit.pt2_check)."""
    return load_checked(_torch(), _archive_reader(), path, trust_pickle)[0]


def export_saved_program(path: Path, *, trust_pickle: bool = False) -> tuple[Path, list[str]]:
    """Export a saved ExportedProgram (torch.export.save) to ONNX; its own dynamic shapes are kept."""
    torch = _torch()
    ep, blob = load_checked(torch, _archive_reader(), path, trust_pickle)
    out = Path(tempfile.mkdtemp(prefix="chipfit-export-")) / "model.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ep, (), str(out), dynamo=True, verbose=False)
    except Exception as exc:
        raise ModelError(f"Could not export the ExportedProgram '{path}' to ONNX: {_short(exc)}.") from None
    example = getattr(ep, "example_inputs", None)  # (args, kwargs) as exported, in torch >= 2.5
    if example and example[0] and not example[1]:
        verify_export(ep.module(), out, example[0])
    out.with_suffix(".pt2").write_bytes(blob)  # the bytes checked, not the file again
    return out, []


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def verify_export(
    module: Any,
    onnx_path: str | Path,
    example_inputs: Any = None,
    *,
    input_names: list[str] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    generate: bool = True,
    max_rows: int = 64,
    hint: str = "",
) -> float:
    """Check that the ONNX model at ``onnx_path`` computes what ``module`` computes, before it is used.

    Both run on the example inputs, on inputs generated from them (negated, and random ones of another batch
    size, with the example's value range; integer inputs take values from the example) unless ``generate`` is
    False, and on up to ``max_rows`` rows of ``data`` (evaluation inputs by name) when given. Every output must
    agree within ``RTOL`` per element plus ``SCALE_ATOL`` of the output's largest magnitude (integer and bool
    outputs exactly). An input set the module itself rejects is skipped. Returns the largest error found,
    relative to the output's scale; raises :class:`ModelError` naming the module, the input set, the output and
    the error otherwise, or when the exported model fails on an input set the module runs.
    """
    torch = _torch()
    from chipfit.backends import get_backend

    name = type(module).__name__
    sets: list[tuple[str, tuple[Any, ...]]] = []
    if example_inputs is not None:
        args = _as_tuple(example_inputs)
        sets.append(("the example inputs", args))
        if generate:
            sets.extend(_generated(torch, args))
    exe = get_backend("onnxruntime").compile(Path(onnx_path), "cpu", {})
    try:
        names = list(exe.input_names)
        if data is not None:
            order = input_names or names
            missing = [n for n in order if n not in data]
            if missing:
                raise ModelError(f"Checking the export of {name}: the evaluation data lacks inputs {missing}.")
            sets.append(("the evaluation data", tuple(torch.as_tensor(np.asarray(data[n][:max_rows])) for n in order)))
        worst = 0.0
        with eval_mode(module):
            for label, args in sets:
                worst = max(worst, _compare(torch, module, exe, names, input_names, label, args, hint))
        return worst
    finally:
        exe.close()


def _generated(torch: Any, args: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """Inputs that take the other branches a trace may have baked in: the example negated, and random
    values of the example's range at batch size + 1."""
    gen = torch.Generator().manual_seed(0)
    floats = [a.is_floating_point() for a in args]
    out = []
    if any(floats):
        out.append(("the example inputs negated", tuple(-a if f else a for a, f in zip(args, floats, strict=True))))
    batch = args[0].shape[0] + 1 if args and args[0].dim() > 0 else None
    if batch is not None and all(a.dim() > 0 and a.shape[0] == args[0].shape[0] for a in args):
        other = []
        for a, f in zip(args, floats, strict=True):
            shape = (batch, *a.shape[1:])
            if f:
                std = float(a.float().std()) if a.numel() > 1 else 1.0
                r = torch.randn(shape, generator=gen) * (std or 1.0) + float(a.float().mean())
                other.append(r.to(a.dtype))
            else:  # token ids, masks, indices: values the example holds, so they stay in range
                flat = a.reshape(-1)
                other.append(flat[torch.randint(len(flat), shape, generator=gen)])
        out.append((f"random inputs at batch size {batch}", tuple(other)))
    return out


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out] if hasattr(out, "detach") else []


def _compare(
    torch: Any, module: Any, exe: Any, names: list[str], input_names: list[str] | None, label: str, args: Any, hint: str
) -> float:
    name = type(module).__name__
    try:
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in _flatten(module(*args))]
    except Exception:  # the module rejects this input set itself: nothing to compare
        return 0.0
    order = input_names if input_names and len(input_names) == len(args) else names
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(order, args, strict=False) if n in names}
    cause = f" The TorchScript exporter warned: {hint}." if hint else ""
    fix = (
        " Make the module traceable (replace Python control flow on tensor values with torch.where or torch.cond), "
        "or export it yourself and pass the .onnx file."
    )
    try:
        got = exe.run(feeds)
    except Exception as exc:
        raise ModelError(
            f"The ONNX export of {name} fails on {label}, which the module runs: {_short(exc)}.{cause}{fix}"
        ) from None
    if len(got) != len(expected):
        raise ModelError(
            f"The ONNX export of {name} has {len(got)} outputs where the module returns {len(expected)} tensors.{fix}"
        )
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g.shape != e.shape:
            raise ModelError(
                f"The ONNX export of {name} differs from the module on {label}: output {i} has shape {g.shape}, "
                f"the module's {e.shape}.{cause}{fix}"
            )
        if not np.issubdtype(e.dtype, np.floating):
            if not np.array_equal(g, e):
                raise ModelError(
                    f"The ONNX export of {name} differs from the module on {label}: output {i} ({e.dtype}) "
                    f"differs in {int((g != e).sum())} of {e.size} values.{cause}{fix}"
                )
            continue
        e64, g64 = e.astype(np.float64), g.astype(np.float64)
        same = (g64 == e64) | (np.isnan(e64) & np.isnan(g64))  # equal infinities and NaNs agree
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(g64 - e64))
        finite = np.abs(e64[np.isfinite(e64)])
        scale = float(finite.max()) if finite.size else 1.0
        err = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
        rel = err / max(scale, 1e-12)
        worst = max(worst, rel)
        if not np.all(diff <= RTOL * np.abs(np.nan_to_num(e64)) + SCALE_ATOL * scale + 1e-7):
            raise ModelError(
                f"The ONNX export of {name} computes something else than the module on {label}: output {i} "
                f"differs by up to {err:.4g} (the output's largest magnitude is {scale:.4g}; tolerance "
                f"{RTOL:g} relative + {SCALE_ATOL:g} of that magnitude).{cause}{fix}"
            )
    return worst
