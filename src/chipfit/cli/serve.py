"""``chipfit serve``, ``chipfit cascade`` and ``chipfit loadtest``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from chipfit.cli.common import app, err_console, out_console, setup_logging, user_errors


def _serve_deps() -> None:
    try:
        import fastapi  # noqa: F401
        import orjson  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        from chipfit.errors import SpecError

        raise SpecError(
            f"chipfit serve needs the [serve] extra ({exc.name} is missing): pip install 'chipfit[serve]'."
        ) from None


@app.command()
def serve(
    models: Annotated[
        list[str], typer.Argument(help="Artifact folders of `fit` or `cascade`: DIR, NAME=DIR or NAME@VERSION=DIR.")
    ],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    slo_p99_ms: Annotated[
        float | None,
        typer.Option(
            help="p99 latency target per request; default: the fit spec's max_p99_ms, else 4× the batch-1 "
            "p99, at least 5 ms."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows per model run (1: one request at a time).")] = 64,
    max_queue: Annotated[int | None, typer.Option(help="Most rows waiting per model (default 4×max-batch).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per model (default: the CPU quota shared).")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CHIPFIT_SERVE_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on all but /healthz and /readyz. Prefer the env var: "
            "argv shows in ps.",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="CHIPFIT_SERVE_ADMIN_TOKEN",
            help="Enable the admin routes (POST /v1/models/NAME/versions, /rollback), for this token only; "
            "without it they do not exist. Prefer the env var.",
        ),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted.")] = 64.0,
    trust_native: Annotated[
        bool,
        typer.Option(
            "--trust-native",
            envvar="CHIPFIT_TRUST_NATIVE",
            help="DANGEROUS: load compiled libraries (TVM's model.so) from artifacts another chipfit built; "
            "loading one runs its code. Artifacts this chipfit home built are trusted without it.",
        ),
    ] = False,
    access_log: Annotated[bool, typer.Option(help="One JSON line per request on stderr.")] = True,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy as a Ray Serve application (extra \\[ray]).")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to deploy to (default: start one).")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas.")] = 1,
) -> None:
    """Serve fitted models over HTTP, batching requests as far as the p99 SLO allows.

    Clients POST /v1/models/NAME/predict with {"inputs": {...}} (or an .npz body). Batches grow under load only as far
    as the p99 SLO allows; requests that cannot meet it are rejected at once (429, Retry-After). Metrics at /metrics,
    API docs at /docs. Artifacts are checked before loading (files inside their folder with matching sha256, built-in
    backends; CHIPFIT_BACKENDS=pkg.mod:attr trusts a third-party one)."""
    setup_logging(False)
    if trust_native:  # read by chipfit.provenance in this process and in any replica it starts
        import os

        os.environ["CHIPFIT_TRUST_NATIVE"] = "1"
    with user_errors():
        _serve_deps()
        from chipfit.serve.server import ServeOptions, run_server

        opts = ServeOptions(
            models,
            host,
            port,
            slo_p99_ms,
            max_batch,
            max_queue,
            threads,
            token,
            int(max_body_mb * 2**20),
            access_log,
            replicas,
            admin_token,
        )
        if ray:
            from chipfit.serve.ray_serve import run_ray

            run_ray(opts, ray_address)
        else:
            run_server(opts)


@app.command()
def cascade(
    fast: Annotated[Path, typer.Argument(help="Artifact of the fast model.")],
    accurate: Annotated[Path, typer.Argument(help="Artifact of the accurate model.")],
    data: Annotated[Path, typer.Option(help="Labelled evaluation data (.npz with the inputs and 'labels').")],
    max_accuracy_drop: Annotated[
        float, typer.Option(help="Accuracy the cascade may lose vs the accurate model.")
    ] = 0.01,
    out: Annotated[Path | None, typer.Option(help="Artifact folder of the cascade (for `chipfit serve`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the choice as JSON.")] = False,
) -> None:
    """Put a fast model before an accurate one, within an accuracy bound.

    Picks, on half of the labelled data, the confidence threshold below which queries go on to the accurate model,
    minimising expected latency within the accuracy bound, and reports its accuracy on the other half."""
    with user_errors():
        from chipfit.serve.cascade import build_cascade

        r = build_cascade(fast, accurate, data, max_accuracy_drop, out)
        if json_out:
            sys.stdout.write(json.dumps(r.to_dict(), indent=2) + "\n")
            return
        out_console.print(
            r.summary(), soft_wrap=True
        )  # the terminal wraps it; says that the accuracy is measured on rows held out from the choice


@app.command()
def loadtest(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000")],
    model: Annotated[str, typer.Option(help="Model name (name or name@version).")],
    rate: Annotated[float, typer.Option(help="Mean requests per second (open loop).")] = 100.0,
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 10.0,
    arrival: Annotated[str, typer.Option(help="poisson, bursty or constant.")] = "poisson",
    data: Annotated[Path | None, typer.Option(help=".npz whose first row is sent (default: random inputs).")] = None,
    rows: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 1,
    binary: Annotated[bool, typer.Option("--npz", help="Send .npz bodies instead of JSON.")] = False,
    connections: Annotated[int, typer.Option(min=1, help="Most connections open at once.")] = 256,
    token: Annotated[str | None, typer.Option(envvar="CHIPFIT_SERVE_TOKEN", help="Bearer token.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Load a chipfit server with open-loop arrivals and report its latency and rejections.

    Reports throughput, p50/p90/p99, rejections and errors as the client saw them."""
    with user_errors():
        from chipfit.errors import SpecError
        from chipfit.serve.client import request_body
        from chipfit.serve.loadtest import run_load

        if arrival not in ("poisson", "bursty", "constant"):
            raise SpecError(f"--arrival must be poisson, bursty or constant, got {arrival!r}.")
        if rate <= 0 or duration <= 0:
            raise SpecError("--rate and --duration must be positive.")
        body, ctype = request_body(url, model, data, rows, binary, token)
        r = run_load(url, model, body, ctype, rate, duration, arrival, connections, token)
        if json_out:
            sys.stdout.write(json.dumps(r.to_dict(), indent=2) + "\n")
            return
        from rich.table import Table

        t = Table(title=f"loadtest {model} @ {rate:g}/s {arrival}, {duration:g} s")
        for c in ("sent", "ok", "rejected", "errors", "throughput/s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
            t.add_column(c, justify="right")
        f = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        t.add_row(
            str(r.sent),
            str(r.ok),
            str(r.rejected),
            str(r.errors),
            f(r.throughput),
            f(r.p50_ms),
            f(r.p90_ms),
            f(r.p99_ms),
            f(r.max_ms),
        )
        out_console.print(t)
        for s in r.error_samples:
            err_console.print(f"error: {s}", highlight=False)
