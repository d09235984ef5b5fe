"""chipfit: fit a trained model to a chip under your constraints.

>>> import chipfit
>>> result = chipfit.fit("model.onnx", data="eval.npz", max_p99_ms=20, out="out/")   # doctest: +SKIP
>>> session = chipfit.runtime.load("out/")                                           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "FitResult",
    "MeasureSettings",
    "Model",
    "SpaceOptions",
    "Spec",
    "Store",
    "__version__",
    "errors",
    "fit",
    "load_data",
    "load_model",
    "runtime",
]

_LAZY = {
    "fit": "chipfit.pipeline",
    "FitResult": "chipfit.pipeline",
    "load_model": "chipfit.model",
    "Model": "chipfit.model",
    "load_data": "chipfit.data",
    "Dataset": "chipfit.data",
    "Spec": "chipfit.spec",
    "Store": "chipfit.store",
    "SpaceOptions": "chipfit.search.space",
    "MeasureSettings": "chipfit.search.driver",
}


def __getattr__(name: str) -> Any:
    if name in ("runtime", "errors"):
        return importlib.import_module(f"chipfit.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chipfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
