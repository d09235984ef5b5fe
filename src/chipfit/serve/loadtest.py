"""``chipfit loadtest URL --model NAME --rate R --duration D --arrival poisson|bursty|constant``: an open-loop
load generator. Send times are drawn up front from the arrival process and kept whatever the server does,
so overload shows (a closed loop would slow down with the server and hide it); a request's latency runs from
its scheduled send time, so time spent waiting for a free connection counts (no coordinated omission).
Keep-alive HTTP/1.1 connections on asyncio streams, opened as needed up to ``connections``.

Arrivals: ``constant`` (evenly spaced), ``poisson`` (exponential gaps), ``bursty`` (Poisson whose rate is
4× the mean for the first 20% of every second and ¼ of it for the rest: the same mean, in bursts)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = ["LoadResult", "arrivals", "run_load"]


@dataclass
class LoadResult:
    url: str
    model: str
    rate: float
    duration_s: float
    arrival: str
    sent: int
    ok: int
    rejected: int
    errors: int
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    reject_p99_ms: float | None = None  # how fast a 429 came back (at its 99th percentile)
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def arrivals(rate: float, duration_s: float, kind: str, seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start) of an arrival process with mean ``rate`` per second."""
    rng = np.random.default_rng(seed)
    if kind == "constant":
        return np.arange(0.0, duration_s, 1.0 / rate)
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 16)
        t = np.cumsum(gaps)
        return t[t < duration_s]
    if kind == "bursty":  # thinning of a Poisson process at the peak rate
        peak = 4.0 * rate
        t = np.cumsum(rng.exponential(1.0 / peak, size=int(peak * duration_s * 1.5) + 16))
        t = t[t < duration_s]
        phase = t % 1.0
        keep = np.where(phase < 0.2, 1.0, 0.25 / 4.0)
        return t[rng.random(len(t)) < keep]
    raise ValueError(f"--arrival must be poisson, bursty or constant, got {kind!r}")


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
            return status, data
        return status, await self.reader.readexactly(length)


async def _load(
    url: str,
    model: str,
    body: bytes,
    ctype: str,
    times: np.ndarray,
    connections: int,
    token: str | None,
    timeout_s: float,
) -> tuple[list[float], list[float], int, list[str]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"{parts.path.rstrip('/')}/v1/models/{model}/predict"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n{auth}"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    idle: list[_Conn] = []
    opened = 0
    slots = asyncio.Semaphore(connections)
    lat: list[float] = []
    rej: list[float] = []
    counts = {"errors": 0}
    samples: list[str] = []
    start = time.perf_counter() + 0.05

    async def one(t: float) -> None:
        nonlocal opened
        await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
        scheduled = start + t
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    opened += 1
                    conn = _Conn(*await asyncio.open_connection(host, port))
                status, data = await asyncio.wait_for(conn.request(head, body), timeout_s)
                idle.append(conn)
            except Exception as exc:  # connection refused/reset, timeout: counted as errors
                counts["errors"] += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.writer.close()
                return
        if status == 200:
            lat.append(time.perf_counter() - scheduled)
        elif status == 429:
            rej.append(time.perf_counter() - scheduled)
        else:
            counts["errors"] += 1
            if len(samples) < 5:
                samples.append(f"HTTP {status}: {data[:200].decode(errors='replace')}")

    await asyncio.gather(*(one(float(t)) for t in times))
    for c in idle:
        c.writer.close()
    return lat, rej, counts["errors"], samples


def run_load(
    url: str,
    model: str,
    body: bytes,
    ctype: str,
    rate: float,
    duration_s: float,
    arrival: str = "poisson",
    connections: int = 256,
    token: str | None = None,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> LoadResult:
    times = arrivals(rate, duration_s, arrival, seed)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    t0 = time.perf_counter()
    lat, rejected, errors, samples = runner(_load(url, model, body, ctype, times, connections, token, timeout_s))
    wall = max(time.perf_counter() - t0, duration_s)
    ms = np.sort(np.array(lat)) * 1e3

    def q(p: float) -> float | None:
        return float(np.quantile(ms, p)) if len(ms) else None

    return LoadResult(
        url,
        model,
        rate,
        duration_s,
        arrival,
        len(times),
        len(lat),
        len(rejected),
        errors,
        len(lat) / wall,
        q(0.5),
        q(0.9),
        q(0.99),
        float(ms[-1]) if len(ms) else None,
        float(np.quantile(np.array(rejected) * 1e3, 0.99)) if rejected else None,
        samples,
    )
