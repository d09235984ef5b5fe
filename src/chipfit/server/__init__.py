"""chipfit as a team service: teams with tokens and quotas in dollars, model and data uploads, a job queue in the
results store's database, a REST API and a web dashboard. ``chipfit server start`` runs it (``create_app``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chipfit.server.app import create_app
    from chipfit.server.config import ServerConfig
    from chipfit.server.service import ServerService

__all__ = ["ServerConfig", "ServerService", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from chipfit.server.app import create_app

        return create_app
    if name == "ServerConfig":
        from chipfit.server.config import ServerConfig

        return ServerConfig
    if name == "ServerService":
        from chipfit.server.service import ServerService

        return ServerService
    raise AttributeError(name)
