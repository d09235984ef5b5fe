"""Backends, one module per runtime, found by module name and imported lazily.

``get_backend("onnxruntime")`` imports ``chipfit.backends.onnxruntime`` and returns its ``backend``
object. A backend module never imports its runtime library at import time, so every backend can be listed
(and say what to install) on any machine. A third-party backend is named ``"package.module:attribute"``
(a Backend instance or class) and is an explicit opt-in: only names registered with
:func:`register_backend` or listed in the ``CHIPFIT_BACKENDS`` environment variable (comma-separated
``module:attribute`` names, or a bare ``module`` for every attribute of it) are imported, so a name read
from a flag or a manifest can never import an arbitrary module.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from chipfit.backends.base import Backend, Capabilities, Executable, OptionSet
from chipfit.errors import BackendUnavailableError

__all__ = [
    "BUILTIN",
    "Backend",
    "BackendInfo",
    "Capabilities",
    "Executable",
    "OptionSet",
    "available_backends",
    "backend_info",
    "get_backend",
    "is_registered",
    "parse_backends",
    "register_backend",
    "registered_plugins",
    "runtime_devices",
]

# measured by default, in this order (the reference session comes from the first available one);
# "null" (ONNX's reference interpreter) is listed but only used when asked for
BUILTIN: tuple[str, ...] = ("onnxruntime", "openvino", "tvm", "torch", "null")
DEFAULT_EXCLUDED = ("null",)
PLUGINS_ENV = "CHIPFIT_BACKENDS"


@dataclass(frozen=True)
class BackendInfo:
    """One row of ``chipfit backends``."""

    name: str
    available: bool
    reason: str | None
    version: str | None
    devices: list[str]
    dtypes: list[str]
    dynamic_shapes: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def registered_plugins() -> tuple[str, ...]:
    """The opted-in plug-in backends: ``module:attribute`` names, or bare modules (any attribute of them)."""
    return tuple(dict.fromkeys(n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()))


def register_backend(name: str) -> None:
    """Opt in the plug-in backend ``"package.module:attribute"`` for this process and the measurement workers
    it starts (they inherit the environment). Importing it runs its code: register only code you trust."""
    module_name, _, attr = name.partition(":")
    if not (module_name and attr) or not all(p.isidentifier() for p in (*module_name.split("."), attr)):
        raise BackendUnavailableError(f"register_backend: '{name}' is not a 'package.module:attribute' name.")
    if name not in registered_plugins():
        os.environ[PLUGINS_ENV] = ",".join((*registered_plugins(), name))


def _unknown(name: str, what: str) -> BackendUnavailableError:
    plugins = registered_plugins()
    listed = f"; opted-in plug-ins: {', '.join(plugins)}" if plugins else ""
    shown = name if len(name) <= 80 else name[:80] + "..."
    return BackendUnavailableError(
        f"{what}unknown backend '{shown}'. Built-in backends: {', '.join(BUILTIN)}{listed}. A plug-in backend "
        f"'package.module:attribute' must be opted in first: {PLUGINS_ENV}=package.module:attribute in the "
        "environment, or chipfit.backends.register_backend() in Python."
    )


def is_registered(name: str) -> bool:
    """Whether ``name`` is a built-in backend or an opted-in plug-in (nothing is imported)."""
    if name in BUILTIN:
        return True
    module_name, _, attr = name.partition(":")
    plugins = registered_plugins()
    return bool(module_name and attr) and (name in plugins or module_name in plugins)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises BackendUnavailableError with the fix when it cannot be found.
    Only built-in names and opted-in plug-ins are accepted: nothing else is ever imported."""
    if not is_registered(name):
        raise _unknown(name, "")
    module_name, _, attr = name.partition(":")
    if not attr:
        module_name, attr = f"chipfit.backends.{name}", "backend"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"Backend '{name}' could not be imported: {exc}.") from None
    obj: Any = getattr(module, attr, None)
    if obj is None:
        raise BackendUnavailableError(f"Backend module '{module_name}' has no attribute '{attr}'.")
    return obj() if isinstance(obj, type) else obj


def backend_info(name: str) -> BackendInfo:
    """Whether ``name`` can run here, why not, its version and the devices it sees."""
    b = get_backend(name)
    try:
        reason = b.unavailable_reason()
    except Exception as exc:  # a broken install is a reason, not a crash
        reason = f"{type(exc).__name__}: {exc}"
    version = devices = None
    if reason is None:
        try:
            version, devices = b.version(), list(b.devices())
        except Exception as exc:
            reason = f"installed but failed to start: {type(exc).__name__}: {exc}"
    caps = b.capabilities
    return BackendInfo(
        name, reason is None, reason, version, devices or [], list(caps.dtypes), bool(caps.dynamic_shapes)
    )


def available_backends() -> list[str]:
    """The built-in backends usable here, in measuring order, without the ``null`` reference interpreter."""
    return [n for n in BUILTIN if n not in DEFAULT_EXCLUDED and backend_info(n).available]


def runtime_devices(backends: list[str] | None = None) -> list[str]:
    """What runs here, as a farm node advertises it: each backend's name (its CPU path) and ``backend-device`` for
    each other device it can run on here (``onnxruntime-cuda``, ``onnxruntime-tensorrt``, ``torch-cuda``)."""
    out: list[str] = []
    for name in backends if backends is not None else available_backends():
        out.append(name)
        out += [f"{name}-{d}" for d in get_backend(name).capabilities.devices if d != "cpu"]
    return out


def parse_backends(text: str | None) -> tuple[str, ...] | None:
    """``--backends onnxruntime,tvm`` → names, checked: unknown names and unavailable ones get the fix.
    None or "all" → None (every available backend)."""
    if text is None or text.strip() in ("", "all"):
        return None
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for n in names:
        if not is_registered(n):
            raise _unknown(n, "--backends: ")
        info = backend_info(n)
        if not info.available:
            raise BackendUnavailableError(f"--backends: backend '{n}' is not available here: {info.reason}")
    return names
