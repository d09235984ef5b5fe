"""The ``chipfit`` command line: one Typer app (``common``), one module per command group. Every command is a
thin wrapper over the Python API."""

from __future__ import annotations

import chipfit.cli.fit  # noqa: F401  (registered first: version, fit and backends lead --help)
from chipfit.cli import explore, farm, hw, predict, remat, serve, server  # noqa: F401  (each registers its commands)
from chipfit.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
