"""The predict request path, shared by the FastAPI route (which documents it in the OpenAPI spec) and the
plain-ASGI fast path that serves it: no routing, no Request/Response objects, the raw body, orjson, numpy
views, one await on the batcher. Returns (status, headers, body)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from chipfit.serve.batcher import Overloaded
from chipfit.serve.payload import PayloadError, PayloadTooLarge, decode, encode

__all__ = ["OFF_LOOP_BYTES", "handle_predict", "json_error"]

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
OFF_LOOP_BYTES = 256 * 2**10  # a body this large is parsed on a worker thread: the event loop keeps serving


def json_error(code: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return code, [(b"content-type", b"application/json"), *(extra or [])], orjson.dumps({"error": message})


async def handle_predict(
    st: Any,
    name: str,
    header: Callable[[str], str | None],
    read_body: Callable[[], Awaitable[bytes | None]],
    max_body: int,
) -> Reply:
    t0 = time.perf_counter()
    metrics = st.metrics
    try:
        served = st.registry.get(name)
    except KeyError as exc:
        return json_error(404, str(exc.args[0]))
    labels = (served.name, str(served.version))
    length = header("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        metrics.requests.labels(*labels, "413").inc()
        return json_error(413, f"body of {length} bytes is over the limit of {max_body} (--max-body-mb).")
    body = await read_body()
    if body is None or len(body) > max_body:
        metrics.requests.labels(*labels, "413").inc()
        return json_error(413, f"the body is over the limit of {max_body} bytes (--max-body-mb).")
    deadline = None
    hdr = header("x-deadline-ms")
    if hdr is not None:
        try:
            deadline = float(hdr) / 1e3
            if not (deadline > 0 and math.isfinite(deadline)):
                raise ValueError
        except ValueError:
            return json_error(400, f"X-Deadline-Ms must be a positive number of milliseconds, got {hdr!r}.")
    ctype = header("content-type") or ""
    try:
        args = (body, ctype, served.inputs, max_body, served.max_rows)
        if len(body) > OFF_LOOP_BYTES:  # inflating releases the GIL; JSON parsing is bounded by the row cap
            feeds, rows, binary = await asyncio.to_thread(decode, *args)
        else:
            feeds, rows, binary = decode(*args)
        outputs = await served.predict(feeds, rows, deadline, t0)
    except PayloadTooLarge as exc:
        metrics.requests.labels(*labels, "413").inc()
        return json_error(413, f"model '{served.name}': {exc}")
    except PayloadError as exc:
        metrics.requests.labels(*labels, "400").inc()
        return json_error(400, f"model '{served.name}': {exc}")
    except Overloaded as exc:
        metrics.rejections.labels(*labels, exc.reason).inc()
        metrics.requests.labels(*labels, "429").inc()
        retry = str(max(1, math.ceil(exc.retry_after_s))).encode()
        return json_error(429, f"model '{served.name}' is overloaded: {exc.reason}.", [(b"retry-after", retry)])
    except Exception as exc:  # the model itself failed: the server stays up and says so
        metrics.requests.labels(*labels, "500").inc()
        return json_error(500, f"model '{served.name}' failed: {type(exc).__name__}: {exc}")
    content, ctype = encode(outputs, binary)
    metrics.latency.labels(*labels).observe(time.perf_counter() - t0)
    metrics.requests.labels(*labels, "200").inc()
    return 200, [(b"content-type", ctype.encode())], content
