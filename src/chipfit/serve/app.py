"""The HTTP API of ``chipfit serve`` (FastAPI on uvicorn).

    POST /v1/models/{name}/predict      {"inputs": {...}} -> {"outputs": {...}}  (or .npz in, .npz out)
    GET  /v1/models                      names, versions, SLO, backend, inputs
    POST /v1/models/{name}/versions      {"path": DIR[, "version": N]}: hot-load a new version, make it active
    POST /v1/models/{name}/rollback      the previous version becomes active again
                                         (these two, the admin routes, exist only with an admin token)
    GET  /healthz, /readyz, /metrics, /openapi.json, /docs (Swagger UI served locally: ``chipfit.serve.docs``)

The request path is kept lean: the raw body (no pydantic model), orjson, numpy views of the rows, the model
on its batcher's thread. Bad payloads are 400 with a message naming the problem; overload is 429 with
Retry-After; more rows than the queue holds, or an .npz that inflates past the body limit, is 413; a bearer
token (``token``) guards everything but the health probes, and the admin routes need ``admin_token`` (see
``chipfit.serve.auth``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, Response

from chipfit.serve.auth import Access
from chipfit.serve.predict_path import handle_predict

__all__ = ["create_app"]

access_log = logging.getLogger("chipfit.access")
REPLICA: dict[str, Any] = {}  # a Ray Serve replica's registry and metrics (Serve runs a copy of the app)

_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {"inputs": {"type": "object", "additionalProperties": {"type": "array"}}},
                },
                "example": {"inputs": {"x": [[0.0, 1.0]]}},
            },
            "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {"description": '{"outputs": {"<output name>": [[...]]}} (or .npz when the request was .npz)'},
        "400": {"description": "malformed payload, wrong input names, shapes or dtypes"},
        "404": {"description": "no such model or version"},
        "413": {"description": "body larger than the limit (an .npz once inflated), or more rows than the queue holds"},
        "429": {"description": "cannot meet the deadline; retry after Retry-After seconds"},
    },
}


def create_app(
    registry: Any,
    metrics: Any,
    token: str | None = None,
    max_body_bytes: int = 64 * 2**20,
    log_access: bool = True,
    admin_token: str | None = None,
) -> Any:
    """The app; the admin routes (``/versions``, ``/rollback``) are there only when ``admin_token`` is set."""
    app = FastAPI(
        title="chipfit serve",
        version="1",
        description="Models fitted by chipfit, batched to an SLO.",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: blank offline
        redoc_url=None,
    )
    _docs(app)
    app.state.registry = registry
    app.state.metrics = metrics

    class _State:  # app.state, or the replica's when this app is a Ray Serve copy
        @property
        def registry(self) -> Any:
            return app.state.registry if app.state.registry is not None else _replica()["registry"]

        @property
        def metrics(self) -> Any:
            return app.state.metrics if app.state.metrics is not None else _replica()["metrics"]

    st = _State()
    # the API's description holds no data: a browser, which cannot send a Bearer token, can read /docs
    open_paths = {"/healthz", "/readyz", "/docs", "/openapi.json"} | {
        f"/docs/assets/{name}" for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
    }

    def error(code: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=code, headers=headers)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", summary="Every model is loaded and serving")
    async def readyz() -> Any:
        ready = bool(st.registry.models)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prom() -> Any:
        body, ctype = st.metrics.exposition()
        return Response(body, media_type=ctype)

    @app.get("/v1/models", summary="Served models: names, versions, SLO, backend, inputs")
    async def models() -> Any:
        return {"models": st.registry.describe()}

    @app.post("/v1/models/{name}/predict", summary="Run the model", openapi_extra=_PREDICT_DOC)
    async def predict(name: str, request: Request) -> Any:  # documents the path; _Front serves it
        code, headers, body = await handle_predict(st, name, request.headers.get, request.body, max_body_bytes)
        return Response(body, status_code=code, headers={k.decode(): v.decode() for k, v in headers})

    if admin_token:
        _admin_routes(app, st, error)
    app.add_middleware(
        _Front,
        access=Access.of(token, admin_token),
        open_paths=open_paths,
        log_access=log_access,
        state=st,
        max_body=max_body_bytes,
    )
    return app


def _docs(app: Any) -> None:
    from chipfit.serve.docs import mount_docs

    try:
        mount_docs(app)
    except (ImportError, FileNotFoundError) as exc:  # the API still serves; /docs says what to install
        logging.getLogger("chipfit.serve").warning("no /docs page: %s", exc)
        message = f"No API docs page: {exc}"

        async def no_docs() -> Any:
            return Response(message, status_code=503, media_type="text/plain")

        app.add_api_route("/docs", no_docs, methods=["GET"], include_in_schema=False)


def _admin_routes(app: Any, st: Any, error: Any) -> None:
    @app.post("/v1/models/{name}/versions", summary="Hot-load a new version and make it active (admin token)")
    async def load_version(name: str, request: Request) -> Any:
        import asyncio

        try:
            doc = json.loads(await request.body() or b"{}")
            path = doc["path"]
            version = doc.get("version")
            if not isinstance(path, str) or not (version is None or type(version) is int):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return error(400, 'the body must be {"path": "<artifact folder>"} (optionally "version": N).')
        try:  # loading compiles the model: off the event loop, so traffic keeps flowing meanwhile
            served = await asyncio.get_running_loop().run_in_executor(
                None, lambda: st.registry.load(path, name, version)
            )
        except Exception as exc:
            return error(400, f"could not load '{path}' as {name}: {exc}")
        return served.info(True)

    @app.post("/v1/models/{name}/rollback", summary="Make the previous version active again (admin token)")
    async def rollback(name: str) -> Any:
        try:
            return st.registry.rollback(name).info(True)
        except KeyError as exc:
            return error(404, str(exc.args[0]))


def _replica() -> dict[str, Any]:
    """This module's REPLICA as imported in this process (a pickled handler carries a copy of its globals)."""
    import importlib

    return importlib.import_module("chipfit.serve.app").REPLICA  # type: ignore[no-any-return]


class _Front:
    """Plain ASGI in front of FastAPI: the bearer-token checks, one JSON access-log line per request, and the
    predict path served directly (FastAPI's routing and Request/Response objects cost more per request than
    a small model's run; Starlette's ``@app.middleware("http")`` costs a task and a stream)."""

    def __init__(
        self, app: Any, access: Access, open_paths: set[str], log_access: bool, state: Any, max_body: int
    ) -> None:
        self.app, self.open_paths, self.log_access = app, open_paths, log_access
        self.access, self.state, self.max_body = access, state, max_body

    async def _predict(self, scope: Any, receive: Any, send: Any, name: str) -> int:
        headers = {k: v for k, v in scope["headers"]}

        def header(key: str) -> str | None:
            v = headers.get(key.encode())
            return v.decode("latin-1") if v is not None else None

        async def read_body() -> bytes | None:  # None: over the limit (read to the end, not kept)
            chunks, size = [], 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= self.max_body:
                    chunks.append(chunk)
                if not message.get("more_body"):
                    break
            return b"".join(chunks) if size <= self.max_body else None

        code, extra, body = await handle_predict(self.state, name, header, read_body, self.max_body)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [*extra, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return code

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        t0 = time.perf_counter()
        path = scope["path"]
        got = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        code, message = self.access.check(scope["method"], path, got, path in self.open_paths)
        if code:
            body = json.dumps({"error": message}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if code == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": code, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self._log(scope, code, t0)
            return None
        if scope["method"] == "POST" and path.startswith("/v1/models/") and path.endswith("/predict"):
            name = path[len("/v1/models/") : -len("/predict")]
            if name and "/" not in name:
                self._log(scope, await self._predict(scope, receive, send, name), t0)
                return None
        if not self.log_access:
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        status = [0]

        async def send_logged(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, send_logged)
        self._log(scope, status[0], t0)
        return None

    def _log(self, scope: Any, status: int, t0: float) -> None:
        if not self.log_access:
            return
        client = scope.get("client")
        line = {
            "t": round(time.time(), 3),
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "ms": round((time.perf_counter() - t0) * 1e3, 3),
            "client": client[0] if client else None,
        }
        access_log.info(json.dumps(line))
