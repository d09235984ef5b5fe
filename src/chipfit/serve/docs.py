"""Interactive API docs (Swagger UI) served from this machine, so ``/docs`` works offline: the page's script,
stylesheet and icon come from the installed ``swagger-ui-bundle`` package through local routes, never from a
CDN. ``mount_docs`` adds them to any FastAPI app made with ``docs_url=None`` (``chipfit serve``'s, and any
later server's).

    GET {path}                      the Swagger UI page for the app's OpenAPI document
    GET {path}/assets/{file}        swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ASSETS", "mount_docs"]

# file name -> media type: only these are served (no path from the request reaches the file system)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _asset_dir() -> Path:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        raise ImportError(
            "the API docs page needs swagger-ui-bundle (its assets are served locally): pip install 'chipfit[serve]'."
        ) from None
    return Path(swagger_ui_path)


def mount_docs(app: Any, path: str = "/docs", title: str | None = None) -> None:
    """Serve Swagger UI for ``app`` at ``path`` with its assets under ``{path}/assets/`` (the app must be made with
    ``docs_url=None``, else FastAPI's CDN page answers ``path`` first)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import Response

    if getattr(app, "docs_url", None) == path:
        raise ValueError(f"the app already serves FastAPI's own (CDN) docs at {path}: make it with docs_url=None.")
    folder = _asset_dir()
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"swagger-ui-bundle at '{folder}' lacks {', '.join(missing)}: reinstall it (pip install 'chipfit[serve]')."
        )
    body = {name: (folder / name).read_bytes() for name in ASSETS}  # read once: a few MB, served from memory
    base = path.rstrip("/")
    page_title = title or f"{getattr(app, 'title', 'API')} - docs"

    async def docs_page() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=page_title,
            swagger_js_url=f"{base}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/assets/swagger-ui.css",
            swagger_favicon_url=f"{base}/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
        )

    async def asset(name: str) -> Any:
        if name not in ASSETS:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(body[name], media_type=ASSETS[name], headers={"cache-control": "public, max-age=86400"})

    app.add_api_route(path, docs_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{base}/assets/{{name}}", asset, methods=["GET"], include_in_schema=False)
