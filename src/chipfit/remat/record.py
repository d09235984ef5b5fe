"""Recording one training step: the aten ops of its forward (storages allocated, sizes, FLOPs, module stack)
under a ``TorchDispatchMode``, the tensors autograd saves (``saved_tensors_hooks``), every module call's inputs,
and the forward time of every module (plain hooks, the median of a few steps); see :mod:`chipfit.remat.graph`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.hooks import RemovableHandle

__all__ = ["Call", "Op", "Recorder", "preserved", "record", "tensors", "time_modules"]


@dataclass
class Op:
    stack: tuple[str, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    flops: float


@dataclass
class Call:
    path: str
    caller: str | None  # the module whose forward made the call (None: outside the root)
    first_op: int
    inputs: tuple[int, ...]
    last_op: int = -1


class Recorder(TorchDispatchMode):
    """Storage allocations, FLOPs and module stacks of every aten op; saved tensors through pack hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ops: list[Op] = []
        self.sizes: dict[int, int] = {}
        self.by_ptr: dict[int, int] = {}
        self.saved: list[tuple[int, tuple[str, ...]]] = []

    def sid(self, t: torch.Tensor) -> int | None:
        if t.device.type == "meta" or t.untyped_storage().nbytes() == 0:
            return None
        return self.by_ptr.get(t.untyped_storage().data_ptr())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        in_ptrs = {a.untyped_storage().data_ptr() for a in flat_in if a.untyped_storage().nbytes()}
        new = []
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in in_ptrs:
                continue  # a view or an in-place op: no new storage
            s = len(self.sizes)
            self.sizes[s] = t.untyped_storage().nbytes()
            self.by_ptr[ptr] = s
            new.append(s)
        ins = tuple(s for s in (self.sid(a) for a in flat_in) if s is not None)
        flops = 0.0
        packet = getattr(func, "overloadpacket", None)
        if packet in flop_registry:
            try:
                flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            except Exception:  # a formula that does not take this overload's arguments: no FLOPs, not fatal
                flops = 0.0
        self.ops.append(Op(tuple(self.stack), ins, tuple(new), flops))
        return out

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = self.sid(t)
        if s is not None:
            self.saved.append((s, tuple(self.stack)))
        return t


def tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


@contextmanager
def preserved(module: torch.nn.Module) -> Iterator[None]:
    """Gradients, buffers and the RNG as they were before the traced and timed steps."""
    grads = {p: p.grad for p in module.parameters()}
    buffers = {b: b.detach().clone() for b in module.buffers()}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            for p, g in grads.items():
                p.grad = g
            with torch.no_grad():
                for b, v in buffers.items():
                    b.copy_(v)


def _hooks(module: torch.nn.Module, pre: Callable[..., Any], post: Callable[..., Any]) -> list[RemovableHandle]:
    handles = []
    for path, m in module.named_modules():
        handles.append(m.register_forward_pre_hook(lambda _m, a, k, p=path: pre(p, a, k), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda _m, a, k, o, p=path: post(p, o), with_kwargs=True))
    return handles


def record(
    module: torch.nn.Module, inputs: tuple[Any, ...], loss_fn: Callable[[Any], Any]
) -> tuple[Recorder, list[Call]]:
    rec = Recorder()
    calls: list[Call] = []
    open_calls: list[Call] = []

    def pre(path: str, args: Any, kwargs: Any) -> None:
        ins = tuple(s for s in (rec.sid(t) for t in tensors((args, kwargs))) if s is not None)
        call = Call(path, rec.stack[-1] if rec.stack else None, len(rec.ops), ins)
        calls.append(call)
        open_calls.append(call)
        rec.stack.append(path)

    def post(path: str, _out: Any) -> None:
        rec.stack.pop()
        open_calls.pop().last_op = len(rec.ops)

    handles = _hooks(module, pre, post)
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), rec:
            loss = loss_fn(module(*inputs))
        del loss
    finally:
        for h in handles:
            h.remove()
    return rec, calls


def time_modules(
    module: torch.nn.Module, inputs: tuple[Any, ...], loss_fn: Callable[[Any], Any], repeats: int
) -> tuple[dict[str, float], float, float]:
    """Median forward milliseconds per module path, and of the whole forward and backward (on CUDA each
    hook synchronises the device, so the times are the kernels' and not their launches')."""
    per: dict[str, list[float]] = {}
    starts: list[float] = []
    cuda = any(t.is_cuda for t in tensors(inputs)) or any(p.is_cuda for p in module.parameters())

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def pre(path: str, args: Any, kwargs: Any) -> None:
        starts.append(now())

    def post(path: str, _out: Any) -> None:
        per.setdefault(path, []).append((now() - starts.pop()) * 1e3)

    handles = _hooks(module, pre, post)
    fwd: list[float] = []
    bwd: list[float] = []
    samples: dict[str, list[float]] = {}
    try:
        for _ in range(repeats + 1):  # the first is a warm-up
            module.zero_grad(set_to_none=True)
            per.clear()
            t0 = now()
            loss = loss_fn(module(*inputs))
            t1 = now()
            loss.backward()
            t2 = now()
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            for k, v in per.items():
                samples.setdefault(k, []).append(sum(v))
            del loss
    finally:
        for h in handles:
            h.remove()
    timed = {k: statistics.median(v[1:] or v) for k, v in samples.items()}
    return timed, statistics.median(fwd[1:]), statistics.median(bwd[1:])
