"""A module that trains under a plan's checkpoints, sharing the original's parameters.

Each checkpoint of the plan (a tuple of module paths) becomes a non-reentrant ``torch.utils.checkpoint``: a
single module gets a checkpointed ``forward``; a run of adjacent children of an ``nn.Sequential`` is run inside
one checkpoint by the Sequential's new ``forward``. The modules on the way from the root are shallow copies
(their own child tables, the same parameter and buffer tensors), so the original module is left as it was and
both train the same parameters. Parameter names (``state_dict`` keys) are unchanged.
"""

from __future__ import annotations

import copy
import types
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from chipfit.errors import ModelError

if TYPE_CHECKING:
    from chipfit.remat.plan import Plan

__all__ = ["apply"]


def apply(module: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    """``module`` trained with ``plan``'s checkpoints (``module`` itself when the plan recomputes nothing)."""
    if not plan.checkpoints:
        return module
    copies: dict[str, torch.nn.Module] = {}
    root = _copy(module)
    copies[""] = root
    by_parent: dict[str, list[tuple[str, ...]]] = {}
    for seg in plan.checkpoints:
        if len(seg) == 1:
            target = _writable(module, copies, seg[0])
            target.forward = types.MethodType(_checkpointed_forward(type(target).forward), target)  # type: ignore[method-assign]
        else:
            parent = seg[0].rpartition(".")[0]
            by_parent.setdefault(parent, []).append(seg)
    for parent, segs in by_parent.items():
        seq = _writable(module, copies, parent)
        if type(seq).forward is not torch.nn.Sequential.forward:
            raise ModelError(
                f"the plan checkpoints {segs[0]} together, but '{parent}' is a {type(seq).__name__}, not an "
                "nn.Sequential; plan again for this module."
            )
        names = list(seq._modules)
        runs = []
        for seg in segs:
            idx = [names.index(p.rpartition(".")[2]) for p in seg]
            if idx != list(range(idx[0], idx[0] + len(idx))):
                raise ModelError(f"the plan's checkpoint {seg} is not a run of adjacent children of '{parent}'.")
            runs.append((idx[0], idx[-1] + 1))
        seq.forward = types.MethodType(_segmented_forward(sorted(runs)), seq)  # type: ignore[method-assign]
    return root


def _copy(m: torch.nn.Module) -> torch.nn.Module:
    c = copy.copy(m)
    c._modules = OrderedDict(m._modules)
    c._parameters = dict(m._parameters)
    c._buffers = dict(m._buffers)
    return c


def _writable(root: torch.nn.Module, copies: dict[str, torch.nn.Module], path: str) -> torch.nn.Module:
    """The copy of the module at ``path`` (copying its ancestors on the way), to be changed."""
    if path in copies:
        return copies[path]
    parent_path, _, name = path.rpartition(".")
    parent = _writable(root, copies, parent_path)
    original = parent._modules.get(name)
    if original is None:
        raise ModelError(f"the plan names the module '{path}', which this module does not have; plan again for it.")
    c = _copy(original)
    parent._modules[name] = c
    copies[path] = c
    return c


def _checkpointed_forward(forward: Any) -> Any:
    def run(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(self, *args, **kwargs)
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)

    return run


def _chain(mods: list[torch.nn.Module], x: Any) -> Any:
    for m in mods:
        x = m(x)
    return x


def _segmented_forward(runs: list[tuple[int, int]]) -> Any:
    def run(self: torch.nn.Module, x: Any) -> Any:
        mods = [m for m in self._modules.values() if m is not None]
        at = 0
        for start, stop in runs:
            x = _chain(mods[at:start], x)
            if torch.is_grad_enabled():
                x = checkpoint(_chain, mods[start:stop], x, use_reentrant=False)
            else:
                x = _chain(mods[start:stop], x)
            at = stop
        return _chain(mods[at:], x)

    return run
