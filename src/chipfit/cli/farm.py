"""``chipfit farm up|down|join|status``: a device farm on Ray (``chipfit.farm``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chipfit.cli.common import OneLineErrors, app, err_console, out_console, user_errors

__all__ = ["farm_app"]

farm_app = typer.Typer(
    cls=OneLineErrors,  # each command's help reflowed to the terminal's width
    help="A device farm on Ray: machines that measure candidates for their catalogue target.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(farm_app, name="farm")


@farm_app.command()
def up(
    local_nodes: Annotated[
        str,
        typer.Option(
            help="Catalogue targets, one node each, e.g. 'aws-c5.xlarge,aws-c6g.xlarge' (declared, not detected)."
        ),
    ],
) -> None:
    """Start a farm on this machine: a Ray head and one node per listed target, each pinned to its own share of the
    cores. Prints the address to give `fit --farm`; `chipfit farm down` stops it."""
    with user_errors():
        from chipfit.farm.local import up as farm_up
        from chipfit.workspace import default_home

        targets = [t.strip() for t in local_nodes.split(",") if t.strip()]
        state = farm_up(targets, default_home())
        for i, node in enumerate(state["nodes"]):
            cores = ",".join(str(c) for c in node["cores"])
            err_console.print(f"node {i}: {node['target']} (declared) on core(s) {cores}, pid {node['pid']}")
        out_console.print(state["address"], highlight=False)


@farm_app.command()
def down() -> None:
    """Stop the farm `chipfit farm up` started on this machine (only its processes: never `ray stop`)."""
    with user_errors():
        from chipfit.farm.local import down as farm_down
        from chipfit.workspace import default_home

        state = farm_down(default_home())
        if state is None:
            err_console.print("no local farm is up (nothing to stop)")
            return
        out_console.print(f"stopped the farm at {state['address']} ({len(state['nodes'])} nodes)", highlight=False)


@farm_app.command()
def join(
    address: Annotated[str, typer.Argument(help="The farm's address, host:port (what `chipfit farm up` printed).")],
    as_target: Annotated[
        str | None,
        typer.Option(
            "--as", help="Declare this node as a catalogue target instead of detecting it (labelled declared)."
        ),
    ] = None,
    cpus: Annotated[int | None, typer.Option(min=1, help="CPUs this node offers (default: its CPU quota).")] = None,
    backends: Annotated[
        str | None,
        typer.Option(
            help="Backends this node offers, comma-separated; `backend-device` for a GPU path, e.g. onnxruntime-cuda "
            "(default: every one available here, with the GPUs each can use)."
        ),
    ] = None,
) -> None:
    """Make this machine a node of the farm at ADDRESS: it detects its catalogue target, backends and cores, and
    runs until stopped (this process becomes the node: its pid is the one `farm status` shows)."""
    with user_errors():
        from chipfit.farm.local import join_command
        from chipfit.farm.nodes import ray_env

        offered = [b.strip() for b in backends.split(",") if b.strip()] if backends is not None else None
        argv = join_command(address, as_target, cpus, offered)
        sys.stdout.flush()
        os.execve(argv[0], argv, ray_env(dict(os.environ)))


@farm_app.command()
def status(
    farm: Annotated[
        str | None, typer.Option(help="The farm's address (default: the local farm `chipfit farm up` started).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the nodes as JSON on stdout.")] = False,
) -> None:
    """List the farm's nodes: id, target, detected/declared, backends, busy/free, and the node's process id."""
    with user_errors():
        from chipfit.farm.nodes import farm_nodes

        address = farm or _local_address()
        nodes = farm_nodes(address)
        if json_out:
            sys.stdout.write(json.dumps({"address": address, "nodes": [n.to_dict() for n in nodes]}, indent=2) + "\n")
            return
        from rich.table import Table

        table = Table(title=f"chipfit farm at {address}")
        for col in ("node", "target", "how", "backends", "state", "cpus", "pid"):
            table.add_column(col, overflow="fold")
        for n in nodes:
            d = n.to_dict()
            table.add_row(
                n.node_id[:12], n.target, n.how, ", ".join(n.backends), d["state"], str(n.cpus), str(n.pid or "-")
            )
        out_console.print(table)


def _local_address() -> str:
    from chipfit.farm.local import state_path
    from chipfit.farm.nodes import FarmError
    from chipfit.workspace import default_home

    path = state_path(default_home())
    if not path.exists():
        raise FarmError("no --farm given and no local farm is up: give --farm HOST:PORT or run `chipfit farm up`.")
    return str(json.loads(path.read_text())["address"])


def fit_on_farm(
    model: Path,
    data: Path,
    spec: Path | None,
    farm: str,
    targets: str | None,
    out: Path | None,
    calib_data: Path | None,
    space: Any,
    settings: Any,
    store: str | None,
    quiet: bool,
    json_out: bool,
    trust_pickle: bool,
    overrides: dict[str, Any],
) -> None:
    """``chipfit fit ... --farm ADDRESS``: measure on the farm, print one winner per target (exit 1 when a target
    has none)."""
    from chipfit.farm.fit import farm_fit as run_farm_fit

    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints node deaths on stdout: keep it for the result
        result = run_farm_fit(
            model,
            data,
            spec,
            address=farm,
            targets=names,
            out=out,
            calib_data=calib_data,
            space=space,
            settings=settings,
            store=store,
            progress=None if quiet else lambda line: err_console.print(line, highlight=False, markup=False),
            trust_pickle=trust_pickle,
            **overrides,
        )
        from chipfit.farm.nodes import ray_module

        ray_module().shutdown()
    if json_out:
        stdout.write(json.dumps(result.to_dict(), default=str) + "\n")
    else:
        print_farm_result(result)
    if not result.feasible:
        raise typer.Exit(1)


def print_farm_result(result: Any) -> None:
    """Each target's fit as a local fit prints it, then the winners side by side."""
    from rich.table import Table

    from chipfit.cli.output import print_fit_result

    for name, t in result.targets.items():
        out_console.rule(f"{name} ({t.how})")
        print_fit_result(out_console, t.fit)
    table = Table(title=f"winners per target (farm {result.address})")
    for col in ("target", "how", "winner", "p50 ms", "p99 ms", "inf/s", "$/1M", "energy mJ", "quality", "node"):
        table.add_column(col, overflow="fold")
    for name, t in result.targets.items():
        w = t.fit.winner
        if w is None:
            table.add_row(name, t.how, "[red]none feasible[/]", *["-"] * 7)
            continue
        cells = [w.metric(k) for k in ("p50_ms", "p99_ms", "throughput", "usd_per_1m", "energy_mj")]
        quality = w.quality()
        table.add_row(
            name,
            t.how,
            w.candidate.label(),
            *[f"{v:.3g}" if isinstance(v, (int, float)) else "-" for v in cells],
            f"{quality:.4g}" if quality is not None else "-",
            t.nodes.get(w.candidate.id, "")[:12] or "-",
        )
    out_console.print(table)
    d = result.to_dict()["dispatch"]
    if d["tasks"]:
        err_console.print(
            f"{d['tasks']} tasks on the farm; dispatch overhead median {d['overhead_median_s']:.3f}s, "
            f"max {d['overhead_max_s']:.3f}s; variants built in {result.build_s:.1f}s before dispatch"
        )
