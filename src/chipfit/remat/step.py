"""The training step ``chipfit remat`` measures, as the CLI, the measurement worker and the batch search share
it: the ``--inputs`` specs, the user's ``FILE.py:function`` references, the loss and the optimizer.

``--inputs 'x:float32[B,256]'`` names one input of ``build()``'s module: its name, dtype and shape, with ``B``
the batch dimension (it may appear once, anywhere). Integer inputs (token ids, labels) are drawn uniformly
from ``[0, HIGH)`` written after the shape: ``ids:int64[B,128]<32000`` (default HIGH 2). The step is forward,
the loss (the mean of the outputs, or ``--loss FILE.py:fn`` called as ``fn(outputs)``), backward and one
optimizer step (SGD, or Adam with its two state tensors per parameter).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipfit.errors import ModelError, SpecError

__all__ = [
    "DTYPES",
    "InputSpec",
    "StepSpec",
    "default_loss",
    "load_ref",
    "parse_input",
    "parse_inputs",
    "ref_of",
    "sequential",
    "train_step",
]

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
OPTIMIZERS = ("sgd", "adam")
_SPEC = re.compile(
    r"^\s*(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<dtype>\w+)\s*\[(?P<dims>[^\]]*)\]\s*(?:<\s*(?P<high>\d+))?\s*$"
)
_EXAMPLE = (
    "'x:float32[B,256]' (name:dtype[dims], B = the batch; integer inputs may add <HIGH, e.g. 'ids:int64[B,64]<1000')"
)


@dataclass(frozen=True)
class InputSpec:
    """One input of the module: ``shape`` holds ints and the batch marker ``"B"``."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    high: int = 2  # integer inputs: values in [0, high)

    def dims(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)

    def tensor(self, batch: int, seed: int = 0) -> Any:
        import torch

        gen = torch.Generator().manual_seed(seed)
        dtype = getattr(torch, self.dtype)
        if self.dtype.startswith("int"):
            return torch.randint(0, self.high, self.dims(batch), generator=gen, dtype=dtype)
        return torch.randn(self.dims(batch), generator=gen).to(dtype)

    def __str__(self) -> str:
        high = f"<{self.high}" if self.dtype.startswith("int") else ""
        return f"{self.name}:{self.dtype}[{','.join(map(str, self.shape))}]{high}"


def parse_input(text: str) -> InputSpec:
    """``x:float32[B,256]`` → InputSpec; a clear :class:`SpecError` naming the input otherwise."""
    m = _SPEC.match(text)
    if not m:
        raise SpecError(f"--inputs {text!r} is not name:dtype[dims]; write e.g. {_EXAMPLE}.")
    dtype = m.group("dtype")
    if dtype not in DTYPES:
        raise SpecError(f"--inputs {text!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    shape: list[int | str] = []
    for d in (p.strip() for p in m.group("dims").split(",")):
        if d == "B":
            shape.append("B")
        elif d.isdigit() and int(d) >= 1:
            shape.append(int(d))
        else:
            raise SpecError(
                f"--inputs {text!r}: dimension {d!r} must be a positive integer or B; write e.g. {_EXAMPLE}."
            )
    if shape.count("B") != 1:
        raise SpecError(f"--inputs {text!r} must name the batch dimension B exactly once; write e.g. {_EXAMPLE}.")
    high = m.group("high")
    if high is not None and not dtype.startswith("int"):
        raise SpecError(f"--inputs {text!r}: '<{high}' (the range of values) is for integer inputs only.")
    if high is not None and int(high) < 1:
        raise SpecError(f"--inputs {text!r}: the range '<{high}' must be at least 1.")
    return InputSpec(m.group("name"), dtype, tuple(shape), int(high) if high else 2)


def parse_inputs(texts: Sequence[str]) -> tuple[InputSpec, ...]:
    if not texts:
        raise SpecError(f"--inputs is required (once per input of the module), e.g. {_EXAMPLE}.")
    specs = tuple(parse_input(t) for t in texts)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"--inputs names {', '.join(dup)} more than once; give each input its own name.")
    return specs


def load_ref(ref: str, flag: str, default: str = "build") -> Callable[..., Any]:
    """The function ``fn`` of ``FILE.py:fn`` (``default`` when the name is left out), imported from the file."""
    file, _, func = str(ref).partition(":")
    func = func or default
    path = Path(file).expanduser().resolve()
    if path.suffix != ".py" or not path.is_file():
        raise SpecError(f"{flag} {ref!r}: '{file}' is not a Python file. Write FILE.py:function with an existing file.")
    name = f"chipfit_remat_user_{path.stem}_{abs(hash(str(path)))}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SpecError(f"{flag} {ref!r}: '{path}' cannot be imported as a Python file.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise SpecError(f"{flag} {ref!r}: importing '{path}' failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SpecError(f"{flag} {ref!r}: {path.name} has no function '{func}'. Write FILE.py:function.")
    return fn  # type: ignore[no-any-return]


def default_loss(outputs: Any) -> Any:
    """The mean of the outputs (summed over the floating-point tensors of a tuple, list or dict)."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs.float().mean()
    items = outputs.values() if isinstance(outputs, dict) else outputs
    terms = [t.float().mean() for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not terms:
        raise ModelError("the module's outputs hold no floating-point tensor to take the mean of; give --loss.")
    return torch.stack(terms).sum()


@dataclass(frozen=True)
class StepSpec:
    """What one training step is: the module's builder, its inputs, the loss and the optimizer."""

    build: str  # FILE.py:fn returning the torch.nn.Module
    inputs: tuple[InputSpec, ...] = ()
    loss: str | None = None  # FILE.py:fn(outputs) -> scalar; None: the mean of the outputs
    optimizer: str = "sgd"
    batch_fn: str | None = None  # FILE.py:fn(batch) -> tuple of inputs, instead of ``inputs``

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}.")
        if not self.inputs and not self.batch_fn:
            raise SpecError(f"the step needs its inputs: --inputs, e.g. {_EXAMPLE}.")

    def build_module(self) -> Any:
        import torch

        fn = load_ref(self.build, "the model", default="build")
        try:
            module = fn()
        except Exception as exc:
            raise ModelError(f"{self.build}: build() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(module, torch.nn.Module):
            raise ModelError(
                f"{self.build} returned a {type(module).__name__}, not a torch.nn.Module; make it return the model."
            )
        return module.train()

    def example_inputs(self, batch: int) -> tuple[Any, ...]:
        if self.batch_fn:
            out = load_ref(self.batch_fn, "batch_fn", default="batch")(batch)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(s.tensor(batch, seed=k) for k, s in enumerate(self.inputs))

    def loss_fn(self) -> Callable[[Any], Any]:
        return load_ref(self.loss, "--loss", default="loss") if self.loss else default_loss

    def make_optimizer(self, module: Any) -> Any:
        import torch

        params = [p for p in module.parameters() if p.requires_grad]
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=1e-4)
        return torch.optim.SGD(params, lr=1e-4)

    def to_dict(self) -> dict[str, Any]:
        inputs = [str(s) for s in self.inputs]
        return {
            "build": self.build,
            "inputs": inputs,
            "loss": self.loss,
            "optimizer": self.optimizer,
            "batch_fn": self.batch_fn,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepSpec:
        inputs = parse_inputs(list(d["inputs"])) if d.get("inputs") else ()
        return cls(str(d["build"]), inputs, d.get("loss"), str(d.get("optimizer", "sgd")), d.get("batch_fn"))


def ref_of(fn: Callable[..., Any], what: str) -> str:
    """``FILE.py:name`` of a function defined at the top level of a Python file, so that the measurement worker
    (another process) can import it; a clear error for a lambda, a closure or a method."""
    import inspect

    name = getattr(fn, "__qualname__", "")
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        file = None
    if not file or not name or "." in name or "<" in name:
        raise SpecError(
            f"{what} must be a function defined at the top level of a Python file (the step is measured in a "
            f"worker process, which imports it by name); got {fn!r}."
        )
    return f"{file}:{name}"


def train_step(module: Any, inputs: tuple[Any, ...], loss_fn: Callable[[Any], Any], optimizer: Any) -> float:
    """One step: forward, loss, backward, optimizer step; the gradients are freed before it returns."""
    loss = loss_fn(module(*inputs))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def sequential(module: Any, segments: int = 0) -> Any:
    """``module`` (an ``nn.Sequential``) trained through ``torch.utils.checkpoint.checkpoint_sequential`` with
    ``segments`` segments (0: √n, the usual choice)."""
    import math

    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    if not isinstance(module, torch.nn.Sequential):
        raise ModelError(
            f"checkpoint_sequential needs a torch.nn.Sequential (a chain of layers); got {type(module).__name__}."
        )
    n = segments or max(1, round(math.sqrt(len(module))))

    class Sequential(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            return checkpoint_sequential(self.inner, n, x, use_reentrant=False)

    return Sequential()
