"""The team service's web dashboard: server-rendered pages (Jinja2) over the service, plus its static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["install"]

_HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and its /static files on ``app``."""
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    app.include_router(router)
