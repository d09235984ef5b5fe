"""Prometheus metrics of ``chipfit serve`` (its own registry, served at ``/metrics``): request latency and
batch size histograms, queue depth, rejections and requests by code, per model and version; for cascades,
the queries the fast model answered."""

from __future__ import annotations

from typing import Any

__all__ = ["Metrics"]

_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        lv = ["model", "version"]
        self.latency = Histogram("chipfit_request_latency_seconds", "Request latency", lv, buckets=_LAT, registry=r)
        self.batch = Histogram("chipfit_batch_size", "Rows per model run", lv, buckets=_BATCH, registry=r)
        self.service = Histogram("chipfit_batch_seconds", "Model run time per batch", lv, buckets=_LAT, registry=r)
        self.queue = Gauge("chipfit_queue_depth", "Rows waiting", lv, registry=r)
        self.requests = Counter("chipfit_requests_total", "Requests by HTTP code", [*lv, "code"], registry=r)
        self.rejections = Counter("chipfit_rejections_total", "Requests rejected (429)", [*lv, "reason"], registry=r)
        self.cascade_fast = Counter("chipfit_cascade_fast_rows_total", "Rows the fast model answered", lv, registry=r)
        self.cascade_rows = Counter("chipfit_cascade_rows_total", "Rows a cascade served", lv, registry=r)

    def batch_hook(self, name: str, version: int) -> Any:
        b = self.batch.labels(name, str(version))
        s = self.service.labels(name, str(version))
        q = self.queue.labels(name, str(version))

        def hook(rows: int, seconds: float, depth: int) -> None:
            b.observe(rows)
            s.observe(seconds)
            q.set(depth)

        return hook

    def cascade_hook(self, name: str, version: int) -> Any:
        fast = self.cascade_fast.labels(name, str(version))
        rows = self.cascade_rows.labels(name, str(version))

        def hook(answered: int, total: int) -> None:
            fast.inc(answered)
            rows.inc(total)

        return hook

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
