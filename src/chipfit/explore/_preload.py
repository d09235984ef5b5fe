"""Imported by the local runner's forkserver before any trial: Optuna's storage machinery and the trainable's
module (and so its imports — torch, scikit-learn) are loaded once, and each trial forks from it instead of
importing again.
The space file is named by ``CHIPFIT_EXPLORE_SPACE`` in the environment the server starts with."""

from __future__ import annotations

import contextlib
import os

with contextlib.suppress(Exception):  # Optuna's RDB storage imports ~300 modules (SQLAlchemy, Alembic) on first
    import optuna  # use: half a second per trial if each trial paid it

    optuna.storages.RDBStorage("sqlite://").engine.dispose()  # an in-memory database: nothing shared with trials

path = os.environ.get("CHIPFIT_EXPLORE_SPACE")
if path:
    with contextlib.suppress(Exception):  # a trainable that fails to import fails in its trial, with the reason
        from chipfit.explore.space import load_space

        _space = load_space(path)
        if ":" in _space.trainable and not _space.trainable.startswith("chipfit:"):
            _space.load_trainable()
