"""Backends, one module per runtime, found by module name and imported lazily.

``get_backend("onnxruntime")`` imports ``chipfit.backends.onnxruntime`` and returns its ``backend``
object. A third-party backend is named ``"package.module:attribute"`` (a Backend instance or class).
"""

from __future__ import annotations

import importlib
from typing import Any

from chipfit.backends.base import Backend, Capabilities, Executable, OptionSet
from chipfit.errors import BackendUnavailableError

__all__ = ["BUILTIN", "Backend", "Capabilities", "Executable", "OptionSet", "get_backend"]

BUILTIN: tuple[str, ...] = ("onnxruntime",)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises BackendUnavailableError with the fix when it cannot be found."""
    module_name, _, attr = name.partition(":")
    if not attr:
        if name not in BUILTIN:
            raise BackendUnavailableError(
                f"Unknown backend '{name}'. Built-in backends: {', '.join(BUILTIN)}; "
                "a plug-in backend is named 'package.module:attribute'."
            )
        module_name, attr = f"chipfit.backends.{name}", "backend"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"Backend '{name}' could not be imported: {exc}.") from None
    obj: Any = getattr(module, attr, None)
    if obj is None:
        raise BackendUnavailableError(f"Backend module '{module_name}' has no attribute '{attr}'.")
    return obj() if isinstance(obj, type) else obj
