"""The HTTP API of ``chipfit serve`` (FastAPI on uvicorn).

    POST /v1/models/{name}/predict      {"inputs": {...}} -> {"outputs": {...}}  (or .npz in, .npz out)
    GET  /v1/models                      names, versions, SLO, backend, inputs
    POST /v1/models/{name}/versions      {"path": DIR[, "version": N]}: hot-load a new version, make it active
    POST /v1/models/{name}/rollback      the previous version becomes active again
    GET  /healthz, /readyz, /metrics, /openapi.json, /docs

The request path is kept lean: the raw body (no pydantic model), orjson, numpy views of the rows, the model
on its batcher's thread. Bad payloads are 400 with a message naming the problem; overload is 429 with
Retry-After; a bearer token (``token``) guards everything but the health probes.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from typing import Any

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, Response

from chipfit.serve.batcher import Overloaded
from chipfit.serve.payload import PayloadError, decode, encode

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
        "413": {"description": "body larger than the limit"},
        "429": {"description": "cannot meet the deadline; retry after Retry-After seconds"},
    },
}


def create_app(
    registry: Any, metrics: Any, token: str | None = None, max_body_bytes: int = 64 * 2**20, log_access: bool = True
) -> Any:
    app = FastAPI(title="chipfit serve", version="1", description="Models fitted by chipfit, batched to an SLO.")
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
    open_paths = {"/healthz", "/readyz"}

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
    async def predict(name: str, request: Request) -> Any:
        t0 = time.perf_counter()
        metrics = st.metrics
        try:
            served = st.registry.get(name)
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        labels = (served.name, str(served.version))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            metrics.requests.labels(*labels, "413").inc()
            return error(413, f"body of {length} bytes is over the limit of {max_body_bytes} (--max-body-mb).")
        body = await request.body()
        if len(body) > max_body_bytes:
            metrics.requests.labels(*labels, "413").inc()
            return error(413, f"body of {len(body)} bytes is over the limit of {max_body_bytes} (--max-body-mb).")
        deadline = None
        hdr = request.headers.get("x-deadline-ms")
        if hdr is not None:
            try:
                deadline = float(hdr) / 1e3
                if not (deadline > 0 and math.isfinite(deadline)):
                    raise ValueError
            except ValueError:
                return error(400, f"X-Deadline-Ms must be a positive number of milliseconds, got {hdr!r}.")
        try:
            feeds, rows, binary = decode(body, request.headers.get("content-type", ""), served.inputs)
            outputs = await served.predict(feeds, rows, deadline)
        except PayloadError as exc:
            metrics.requests.labels(*labels, "400").inc()
            return error(400, f"model '{served.name}': {exc}")
        except Overloaded as exc:
            metrics.rejections.labels(*labels, exc.reason).inc()
            metrics.requests.labels(*labels, "429").inc()
            retry = str(max(1, math.ceil(exc.retry_after_s)))
            return error(429, f"model '{served.name}' is overloaded: {exc.reason}.", {"Retry-After": retry})
        except Exception as exc:  # the model itself failed: the server stays up and says so
            metrics.requests.labels(*labels, "500").inc()
            return error(500, f"model '{served.name}' failed: {type(exc).__name__}: {exc}")
        content, ctype = encode(outputs, binary)
        metrics.latency.labels(*labels).observe(time.perf_counter() - t0)
        metrics.requests.labels(*labels, "200").inc()
        return Response(content, media_type=ctype)

    @app.post("/v1/models/{name}/versions", summary="Hot-load a new version and make it active")
    async def load_version(name: str, request: Request) -> Any:
        import asyncio

        try:
            doc = json.loads(await request.body() or b"{}")
            path = doc["path"]
            version = doc.get("version")
        except (ValueError, KeyError, TypeError):
            return error(400, 'the body must be {"path": "<artifact folder>"} (optionally "version": N).')
        try:  # loading compiles the model: off the event loop, so traffic keeps flowing meanwhile
            served = await asyncio.get_running_loop().run_in_executor(
                None, lambda: st.registry.load(path, name, version)
            )
        except Exception as exc:
            return error(400, f"could not load '{path}' as {name}: {exc}")
        return served.info(True)

    @app.post("/v1/models/{name}/rollback", summary="Make the previous version active again")
    async def rollback(name: str) -> Any:
        try:
            return st.registry.rollback(name).info(True)
        except KeyError as exc:
            return error(404, str(exc.args[0]))

    app.add_middleware(_Guard, token=token, open_paths=open_paths, log_access=log_access)
    return app


def _replica() -> dict[str, Any]:
    """This module's REPLICA as imported in this process (a pickled handler carries a copy of its globals)."""
    import importlib

    return importlib.import_module("chipfit.serve.app").REPLICA  # type: ignore[no-any-return]


class _Guard:
    """Bearer-token check and one JSON access-log line per request, as plain ASGI (Starlette's
    ``@app.middleware("http")`` costs a task and a stream per request: too much on the lean path)."""

    def __init__(self, app: Any, token: str | None, open_paths: set[str], log_access: bool) -> None:
        self.app, self.open_paths, self.log_access = app, open_paths, log_access
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        t0 = time.perf_counter()
        if self.expected is not None and scope["path"] not in self.open_paths:
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                body = b'{"error":"missing or wrong bearer token: send Authorization: Bearer <token>."}'
                headers = [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                self._log(scope, 401, t0)
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
