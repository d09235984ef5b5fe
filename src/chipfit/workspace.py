"""Where chipfit keeps its results store and caches: ``$CHIPFIT_HOME``, else ``~/.cache/chipfit``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_home", "subdir"]


def default_home() -> Path:
    env = os.environ.get("CHIPFIT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "chipfit"


def subdir(name: str, home: Path | None = None) -> Path:
    """A folder under the chipfit home (models/, variants/, refs/, runs/), created on first use."""
    path = (home or default_home()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
