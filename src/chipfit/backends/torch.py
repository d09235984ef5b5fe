"""PyTorch (``pip install 'chipfit[torch]'``): the model as the user gave it to chipfit — a torch module or
an ExportedProgram, kept by ingest as ``model.pt2`` beside its ONNX export — run eagerly or compiled with
``torch.compile`` (Inductor), on the CPU and, where torch sees a CUDA GPU, on it (also under bfloat16 autocast;
inputs are copied to the GPU and outputs back inside the timed call, as a caller would). Measured with the same
worker and metrics as every other backend, so the table shows whether leaving PyTorch pays at all. torch is
imported in this module (and in ingest) only."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["NO_GPU", "NO_PROGRAM", "TorchBackend", "backend", "cuda_available", "program_path"]

INSTALL = "pip install 'chipfit[torch]'"
MODES = ("eager", "compile")
NO_GPU = "no CUDA GPU visible to torch here (a farm node with one measures these: `chipfit fit --farm`)"
NO_PROGRAM = "The torch backend cannot run this model"  # starts ingest's note that says why (torch_export)


def program_path(model_path: Path, options: Mapping[str, Any] | None = None) -> Path:
    """The saved torch program for ``model_path``: ``options["program"]`` (relative to the model's folder)
    or ``model.pt2`` beside the ONNX file."""
    name = (options or {}).get("program")
    return (model_path.parent / name) if name else model_path.with_suffix(".pt2")


def _onnx_io(model_path: Path) -> tuple[list[str], list[str], list[Any]]:
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim] for i in inputs]
    dtypes = [onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in inputs]
    return [i.name for i in inputs], [o.name for o in proto.graph.output], list(zip(shapes, dtypes, strict=True))


@functools.cache
def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA GPU (asked once per process)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchExecutable:
    def __init__(
        self, fn: Any, input_names: list[str], output_names: list[str], device: str = "cpu", autocast: str | None = None
    ) -> None:
        import torch

        self._torch = torch
        self._fn = fn
        self._device = device
        self._autocast = getattr(torch, autocast) if autocast else None
        self.input_names = input_names
        self.output_names = output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self._device) for n in self.input_names]
        cast = (
            torch.autocast(self._device.split(":")[0], dtype=self._autocast)
            if self._autocast is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), cast:
            out = self._fn(*args)
        outs = out if isinstance(out, (tuple, list)) else [out]
        # .cpu() waits for the GPU: the timed call covers the copies and the kernels; bfloat16 (autocast) comes back
        # as float32, which numpy has; every other dtype as it is
        bf16 = torch.bfloat16
        return [(o.float() if o.dtype == bf16 else o).detach().cpu().numpy() for o in outs]

    def close(self) -> None:
        self._fn = None


class TorchBackend:
    name = "torch"
    source = "torch"  # runs a saved torch program, not the ONNX graph

    @property
    def capabilities(self) -> Capabilities:
        devices = ("cpu", "cuda") if cuda_available() else ("cpu",)
        dtypes = ("float32", "bfloat16") if cuda_available() else ("float32",)
        return Capabilities(devices=devices, dtypes=dtypes, dynamic_shapes=True, specializes_batch=True)

    def unavailable_reason(self) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return f"torch is not installed: {INSTALL}"
        return None

    def version(self) -> str | None:
        import torch

        return str(torch.__version__)

    def devices(self) -> list[str]:
        import torch

        gpus = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        return ["cpu", *gpus]

    def initialize(self) -> None:
        import torch  # noqa: F401

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> TorchExecutable:
        import torch

        if target not in self.capabilities.devices:
            supported = ", ".join(self.capabilities.devices)
            raise ValueError(f"torch backend: target '{target}' is not supported here (supported: {supported})")
        program = program_path(model_path, options)
        if not program.exists():
            raise FileNotFoundError(
                f"torch backend: no saved torch program ({program.name}) beside '{model_path}'. It runs models "
                "given to chipfit as a torch.nn.Module or a .pt2 ExportedProgram, not ONNX files."
            )
        if "threads" in options:
            torch.set_num_threads(int(options["threads"]))
        from chipfit.pt2_check import load_checked

        reader: Any = None  # another torch without it: the archive cannot be checked, so it is refused
        with contextlib.suppress(ImportError):
            from torch.export.pt2_archive._package import PT2ArchiveReader as reader
        fn: Any = load_checked(torch, reader, program)[0].module()  # it may sit beside a user's .onnx: checked
        if target == "cuda":
            fn = fn.to(f"cuda:{int(options.get('device_id', 0))}")
        mode = options.get("mode", "eager")
        if mode == "compile":
            fn = torch.compile(fn, mode=options.get("compile_mode") or None, dynamic=False)
        elif mode != "eager":
            raise ValueError(f"torch backend: mode '{mode}' is not one of {', '.join(MODES)}")
        inputs, outputs, specs = _onnx_io(model_path)
        device = f"cuda:{int(options.get('device_id', 0))}" if target == "cuda" else "cpu"
        exe = TorchExecutable(fn, inputs, outputs, device, options.get("autocast"))
        if mode == "compile" and "batch" in options:  # Inductor compiles on the first call: do it here
            feeds = {
                n: np.zeros([int(options["batch"]) if d is None else d for d in shape], dtype)
                for n, (shape, dtype) in zip(inputs, specs, strict=True)
            }
            exe.run(feeds)
        return exe

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        if not program_path(model.path).exists():
            why = "the model was given as ONNX; the torch backend runs models given as a torch.nn.Module or a .pt2 "
            why += "ExportedProgram"
            for note in model.notes:  # a module that torch.export could not capture: ingest's note says why
                if note.startswith(NO_PROGRAM):
                    why = note[len(NO_PROGRAM) :].lstrip(":; ")
            return OptionSet(unsuitable=f"torch: {why}")
        options: list[dict[str, Any]] = [{"mode": m, "threads": cpus} for m in MODES]
        # on a CUDA GPU: eager, compiled, and compiled under bfloat16 autocast (its quality is measured like any)
        gpu: list[dict[str, Any]] = [
            {"mode": "eager", "device": "cuda"},
            {"mode": "compile", "device": "cuda"},
            {"mode": "compile", "device": "cuda", "autocast": "bfloat16"},
        ]
        if cuda_available():  # measured with eager on the CPU; compiled on the CPU for the fastest variants
            return OptionSet(variants=[[]], options=[options[0], *gpu, *options[1:]], primary=1 + len(gpu))
        why = f"cuda: {NO_GPU}"
        skips = {len(options) + i: why for i in range(len(gpu))}
        return OptionSet(variants=[[]], options=options + gpu, reference_options=None, option_skip=skips)

    def package(self, model_path: Path, target: str, options: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        shutil.copy2(program_path(model_path, options), dest / "model.pt2")
        return {**options, "program": "model.pt2"}


backend = TorchBackend()
