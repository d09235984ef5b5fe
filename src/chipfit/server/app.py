"""``create_app(config)``: the team service as one FastAPI application: the REST API (``api.py``), the dashboard
(``dashboard.py``), Swagger UI at ``/docs`` served offline (``chipfit.serve.docs``), an upload size limit
enforced on the request body as it streams in, and the local job worker started and stopped with the app."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from chipfit.server import dashboard
from chipfit.server.api import router
from chipfit.server.config import ServerConfig
from chipfit.server.errors import ServiceError, TooLarge
from chipfit.server.jobs import JobWorker, recover_jobs
from chipfit.server.service import ServerService

__all__ = ["BodyLimit", "create_app"]

_MULTIPART_SLACK = 1 << 20  # headers and boundaries of a multipart body around its files


class _BodyTooLarge(HTTPException):
    """Raised from the body stream (an HTTPException, so FastAPI's body parsing passes it on unchanged)."""

    def __init__(self, limit: int) -> None:
        super().__init__(TooLarge.status, _too_large_text(limit))


class BodyLimit:
    """ASGI middleware: a request body larger than ``limit`` bytes is refused with 413, from its Content-Length
    when it declares one, else as soon as the bytes received pass the limit (nothing more is read)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.limit)(scope, receive, send)


def _too_large_text(limit: int) -> str:
    return (
        f"The request body is larger than this server's upload limit ({(limit - _MULTIPART_SLACK) / 2**20:g} MB). "
        "Upload a smaller file, or start the server with a higher limit."
    )


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": _too_large_text(limit)}, status_code=TooLarge.status)


def create_app(config: ServerConfig) -> FastAPI:
    """The service for ``config``: ``app.state.service`` is its :class:`ServerService`."""
    service = ServerService(config)
    worker: JobWorker | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal worker
        gc.freeze()  # what startup made lives as long as the server: keep it out of every collection (latency)
        if config.run_worker:
            recover_jobs(service.db, config.data_dir)
            worker = JobWorker(
                service.db,
                config.data_dir,
                config.url,
                config.home,
                config.farm,
                config.poll_s,
                config.preload_backends,
            )
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()

    app = FastAPI(
        title="chipfit team service",
        description="Upload a model, fit it to hardware under a quota in dollars, download the deployable artifact.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.config = config

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        if exc.status_code == 401 and not request.url.path.startswith("/api") and request.method == "GET":
            from fastapi.responses import RedirectResponse

            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    from chipfit.serve.docs import mount_docs

    mount_docs(app, "/docs", "chipfit team service - API")
    app.include_router(router)
    dashboard.install(app)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes + _MULTIPART_SLACK)
    return app
