"""Reading a trial's checkpoint (``ctx.checkpoint`` writes it with ``torch.save``) without running code from it.

A checkpoint folder is kept to resume a study and may come from elsewhere, and a distill recipe's teacher
``{checkpoint: ...}`` is a user's file: both are loaded with ``weights_only=True`` (tensors, numpy arrays and
scalars, numbers, strings and containers); anything else needs the explicit ``trust_pickle`` opt-in.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

__all__ = ["read_checkpoint"]


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> Any:
    """A checkpoint (``ctx.checkpoint``'s, or any ``torch.save`` file of tensors and containers), loaded with
    ``weights_only=True`` so that it cannot run code (numpy arrays and scalars are allowed too); with
    ``trust_pickle`` a file that needs more (another object, or a plain pickle from an older chipfit) is
    unpickled, which runs code from it."""
    import warnings

    import torch

    from chipfit.errors import ModelError

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as exc:
        if not trust_pickle:
            raise ModelError(
                f"Checkpoint '{path}' is refused: {_unsafe_what(torch, path, exc)}, and unpickling that runs code "
                "from the file. Keep checkpoints to tensors, arrays, numbers, strings, lists and dicts; delete it to "
                "start afresh; or, only if you trust whoever made it, pass --trust-pickle."
            ) from None
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError):
        with open(path, "rb") as f:  # a plain pickle (ctx.checkpoint before chipfit used torch.save)
            return pickle.load(f)


def _numpy_globals() -> list[Any]:
    """What a numpy array or scalar pickles as: reconstructors and dtypes, none of which runs code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGSUV"}
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def _unsafe_what(torch: Any, path: Path, exc: BaseException) -> str:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))  # reads names, runs nothing
    except Exception:  # not a torch.save zip: a plain pickle or a damaged file
        return f"it is not a torch.save file of tensors and containers ({type(exc).__name__})"
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
    found = [g for g in found if g not in allowed]
    return f"it holds {', '.join(found[:3]) or 'objects'}, not only tensors and containers"
