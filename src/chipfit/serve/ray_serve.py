"""``chipfit serve --ray``: the same models, batcher and HTTP API as a Ray Serve application with replicas.
Each replica builds its own registry (model threads, adaptive batchers, metrics) from the artifact folders;
Ray Serve's proxy spreads requests over the replicas; ``--ray-address`` deploys onto an existing cluster
(the folders must be readable on its nodes)."""

from __future__ import annotations

import sys
import time
from typing import Any

from chipfit.errors import SpecError
from chipfit.serve.server import ServeOptions

__all__ = ["deploy", "run_ray"]


def deploy(opts: ServeOptions, address: str | None = None, app_name: str = "chipfit") -> Any:
    """Start (or connect to) Ray, deploy the application, and return Ray Serve's handle."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SpecError("--ray needs Ray Serve: pip install 'chipfit[ray]'.") from None
    from chipfit.serve.app import create_app

    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)  # "local": its own Ray
    serve.start(http_options={"host": opts.host, "port": opts.port})
    ingress = create_app(None, None, opts.token, opts.max_body_bytes, False, opts.admin_token)  # state: per replica

    @serve.deployment(num_replicas=opts.replicas, ray_actor_options={"num_cpus": 0})
    @serve.ingress(ingress)
    class Chipfit:
        def __init__(self, options: ServeOptions) -> None:
            from chipfit.serve.app import REPLICA
            from chipfit.serve.server import build

            _, self.registry, metrics = build(options)
            REPLICA.update(registry=self.registry, metrics=metrics)  # this replica's process

    return serve.run(Chipfit.bind(opts), name=app_name, route_prefix="/")  # type: ignore[attr-defined]


def run_ray(opts: ServeOptions, address: str | None) -> None:
    deploy(opts, address)
    print(
        f"Ray Serve: {opts.replicas} replica(s) on http://{opts.host}:{opts.port}; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
