"""The explore winner, delivered through ``fit``: its trained model (exported to ONNX by its trial) is fitted
to the target under the same bound (and the space's ``deploy.spec``: any ``fit`` spec keys, e.g. a
``max_accuracy_drop`` or a ``time_budget``), and the artifact (model, manifest, report) is written to
``OUT/artifact``. On another target than this machine the artifact is what fits here and the bound is the
prediction's; the manifest says which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["deliver_winner"]


def _data(space: Any, onnx: Path) -> Any:
    from chipfit.explore.constraint import DEPLOY_DATA

    deploy = space.deploy
    saved = onnx.parent / DEPLOY_DATA  # written by the trials: no import of the trainable (and torch) here
    if deploy.get("data") and saved.exists():
        with np.load(saved) as f:
            return {k: f[k] for k in f.files}
    if deploy.get("data"):
        return space.load_function(deploy["data"], "deploy.data")()
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((64, *shape[1:])).astype(np.float32) for name, shape in deploy["inputs"].items()}


def deliver_winner(result: Any, out: Path, store_url: str, target: Any, backends: tuple[str, ...] | None) -> Any:
    """``fit`` on the winner's ONNX with the run's bound; returns the FitResult (``out_dir`` set)."""
    from chipfit.pipeline import fit
    from chipfit.search.space import SpaceOptions

    bound = result.bound
    spec = dict(result.space.deploy.get("spec") or {})  # the space's own fit spec (accuracy drop, time budget)
    if bound is not None:
        spec.update(
            {
                k: v
                for k, v in (("max_p99_ms", bound.max_p99_ms), ("max_memory_mb", bound.max_memory_mb))
                if v is not None
            }
        )
    space = SpaceOptions(backends=backends) if backends else None
    onnx = Path(result.winner["onnx"])
    return fit(onnx, _data(result.space, onnx), spec or None, out=out, store=store_url, space=space)
