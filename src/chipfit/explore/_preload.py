"""Imported by the local runner's forkserver before any trial: Optuna's storage machinery and the trainable's
module (and so its imports — torch, scikit-learn) are loaded once, and each trial forks from it instead of
importing again. torch (and its dynamo, which torch.optim's first optimizer imports: ~2 s) is preloaded only
when the trainable uses it: a trainable without torch does not pay for its import.
The space file is named by ``CHIPFIT_EXPLORE_SPACE`` in the environment the server starts with."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

with contextlib.suppress(Exception):  # Optuna's RDB storage imports ~300 modules (SQLAlchemy, Alembic) on first
    import optuna  # use: half a second per trial if each trial paid it

    optuna.storages.RDBStorage("sqlite://").engine.dispose()  # an in-memory database: nothing shared with trials

path = os.environ.get("CHIPFIT_EXPLORE_SPACE")
if path:
    with contextlib.suppress(Exception):  # a trainable that fails to import fails in its trial, with the reason
        from chipfit.explore.space import RECIPES, load_space

        _space = load_space(path)
        if _space.trainable in RECIPES:
            importlib.import_module("torch")  # the built-in recipes train torch modules
        elif ":" in _space.trainable:
            _space.load_trainable()
if "torch" in sys.modules:
    with contextlib.suppress(Exception):
        importlib.import_module("torch._dynamo")
