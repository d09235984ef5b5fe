"""Assemble and run the server: the registry of models (each given its share of the CPU quota), the metrics,
the FastAPI app, uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipfit.errors import ArtifactError, SpecError

__all__ = ["ServeOptions", "build", "default_slo_s", "run_server"]


@dataclass
class ServeOptions:
    models: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    slo_p99_ms: float | None = None
    max_batch: int = 64
    max_queue: int | None = None
    threads: int | None = None
    token: str | None = None
    max_body_bytes: int = 64 * 2**20
    access_log: bool = True
    replicas: int = 1
    admin_token: str | None = None  # enables the admin routes (hot-load, rollback); never implied by ``token``


MIN_DEFAULT_SLO_S = 0.005  # an HTTP round trip through the server costs about a millisecond on a small CPU


def default_slo_s(folder: Path) -> float:
    """The fit spec's max_p99_ms, else four times the batch-1 p99 from the profile (the accurate model's for a
    cascade), but not under 5 ms: an SLO below what one request costs the server would reject everything."""
    from chipfit.package import inside, read_manifest

    m = read_manifest(folder)
    if m.get("kind") == "cascade":
        m = read_manifest(inside(folder, m.get("accurate"), "accurate"))
    try:
        bound = (m.get("spec") or {}).get("max_p99_ms")
        if bound:
            return float(bound) / 1e3
        prof = sorted(m.get("batch_profile") or [], key=lambda p: p["batch"])
        if prof:
            return max(MIN_DEFAULT_SLO_S, 4 * float(prof[0].get("p99_ms") or prof[0]["p50_ms"]) / 1e3)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(
            f"'{folder}': the latency its manifest records is malformed ({type(exc).__name__}: {exc}); "
            "pass --slo-p99-ms, or run `chipfit fit` again."
        ) from None
    raise SpecError(f"'{folder}' records no latency; pass --slo-p99-ms.")


def build(opts: ServeOptions) -> tuple[Any, Any, Any]:
    """(app, registry, metrics) with every model loaded."""
    from chipfit.hardware.detect import cpu_quota
    from chipfit.serve.app import create_app
    from chipfit.serve.metrics import Metrics
    from chipfit.serve.registry import Registry, parse_model_arg

    if not opts.models:
        raise SpecError("Give at least one artifact folder to serve.")
    if opts.admin_token and opts.admin_token == opts.token:
        raise SpecError(
            "--admin-token must differ from --token: the admin token loads and switches models, the other only "
            "calls them. Pick another admin token (CHIPFIT_SERVE_ADMIN_TOKEN)."
        )
    parsed = [parse_model_arg(a) for a in opts.models]
    for _, _, path in parsed:
        if not (path / "manifest.json").is_file():
            raise ArtifactError(
                f"'{path}' is not a chipfit artifact (no manifest.json). Pass a --out folder of "
                "`chipfit fit` or `chipfit cascade`."
            )
    names = {n or p.resolve().name for n, _, p in parsed}
    threads = opts.threads or max(1, int(cpu_quota()) // max(1, len(names)))
    slo = opts.slo_p99_ms / 1e3 if opts.slo_p99_ms else min(default_slo_s(p) for _, _, p in parsed)
    if slo <= 0:
        raise SpecError(f"--slo-p99-ms must be positive, got {opts.slo_p99_ms}.")
    metrics = Metrics()
    registry = Registry(slo, opts.max_batch, threads, opts.max_queue, metrics)
    for name, version, path in parsed:
        registry.load(path, name, version)
    app = create_app(registry, metrics, opts.token, opts.max_body_bytes, opts.access_log, opts.admin_token)
    return app, registry, metrics


def run_server(opts: ServeOptions) -> None:
    import uvicorn

    app, registry, _ = build(opts)
    if opts.access_log:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        acc = logging.getLogger("chipfit.access")
        acc.addHandler(h)
        acc.setLevel(logging.INFO)
        acc.propagate = False
    for m in registry.describe():
        print(
            f"serving {m['name']}@{m['version']} ({m['kind']}, {m['backend']}) with p99 SLO "
            f"{m['slo_p99_ms']:.3g} ms, max batch {m['max_batch']} on http://{opts.host}:{opts.port}",
            file=sys.stderr,
            flush=True,
        )
    import gc

    gc.collect()
    gc.freeze()  # what start-up allocated (FastAPI, numpy, the models' objects) is never scanned again
    gc.set_threshold(20000, 20, 20)  # a request allocates many short-lived objects: collect less often
    try:
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", access_log=False)
    finally:
        registry.close()
