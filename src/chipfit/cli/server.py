"""``chipfit server start`` and ``chipfit server team create|list|set-quota|rotate-token``: the team service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chipfit.cli.common import OneLineErrors, app, err_console, out_console, setup_logging, user_errors

__all__ = ["server_app", "team_app"]

server_app = typer.Typer(
    cls=OneLineErrors,
    help="A team service: tokens, quotas in dollars, a job queue, a REST API and a web dashboard.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
team_app = typer.Typer(
    cls=OneLineErrors, help="Teams: create, list, set a quota, rotate a token.", no_args_is_help=True
)
server_app.add_typer(team_app, name="team")
app.add_typer(server_app, name="server")

DataDir = Annotated[
    Path, typer.Option(help="The server's folder: its key, uploads, job folders and (by default) its database.")
]
StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="SQLAlchemy URL of the database (results store and the service's tables). Default: a SQLite file in "
        "--data-dir.",
    ),
]


def _service(data_dir: Path, store: str | None):  # type: ignore[no-untyped-def]
    from chipfit.server.config import ServerConfig
    from chipfit.server.service import ServerService

    return ServerService(ServerConfig(data_dir, store_url=store, run_worker=False))


@server_app.command()
def start(
    data_dir: DataDir,
    store: StoreUrl = None,
    farm: Annotated[
        str | None, typer.Option(help="Run jobs on the device farm at this address (host:port) instead of here.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    local_target: Annotated[
        str | None,
        typer.Option(help="Catalogue target whose $/hour prices this machine's measurements (default: its match)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(min=1, help="Largest upload accepted (MB).")] = 512.0,
    preload_backends: Annotated[
        bool,
        typer.Option(
            help="Have the next job's process, started while the server is idle, import every backend's library "
            "(a job that tries every backend then starts measuring seconds sooner; ~0.5 GB held while waiting)."
        ),
    ] = True,
) -> None:
    """Run the service: REST API under /api, dashboard at /, API docs at /docs. One job runs at a time here (or
    on the farm with --farm); a restart loses no job."""
    setup_logging(False)
    with user_errors():
        import uvicorn

        from chipfit.server.app import create_app
        from chipfit.server.config import ServerConfig
        from chipfit.server.quota import price_of

        config = ServerConfig(
            data_dir, store_url=store, farm=farm, host=host, port=port, local_target=local_target,
            max_upload_mb=max_upload_mb, preload_backends=preload_backends,
        )  # fmt: skip
        if farm is None:
            _, _, basis = price_of(local_target)
            err_console.print(f"local pool priced as {basis}", highlight=False, markup=False)
        application = create_app(config)
        err_console.print(f"chipfit server on http://{host}:{port} (data in {config.data_dir})", highlight=False)
        uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@team_app.command("create")
def team_create(
    name: Annotated[str, typer.Argument(help="The team's name.")],
    data_dir: DataDir,
    quota: Annotated[str | None, typer.Option(help="Spending limit in dollars, e.g. 50usd; default none.")] = None,
    store: StoreUrl = None,
) -> None:
    """Create a team; prints its API token once, as the last word (only a hash of it is kept)."""
    with user_errors():
        from chipfit.server.quota import parse_quota

        service = _service(data_dir, store)
        team, token = service.create_team(name, parse_quota(quota))
        limit = f"quota ${team.quota_usd:g}" if team.quota_usd is not None else "no quota"
        out_console.print(f"team {team.name} ({team.id}), {limit}; token (shown once): {token}", highlight=False)


@team_app.command("list")
def team_list(data_dir: DataDir, store: StoreUrl = None) -> None:
    """The teams with their quota and spend."""
    with user_errors():
        from rich.table import Table

        table = Table(title="teams")
        for col in ("name", "id", "quota $", "spent $", "created"):
            table.add_column(col)
        for t in _service(data_dir, store).list_teams():
            quota = f"{t.quota_usd:.4g}" if t.quota_usd is not None else "none"
            table.add_row(t.name, t.id, quota, f"{t.spent_usd:.4g}", t.created_at.strftime("%Y-%m-%d %H:%M"))
        out_console.print(table)


@team_app.command("set-quota")
def team_set_quota(
    name: Annotated[str, typer.Argument(help="The team's name (or id).")],
    quota: Annotated[str, typer.Argument(help="Dollars, e.g. 50usd, or 'none' for no limit.")],
    data_dir: DataDir,
    store: StoreUrl = None,
) -> None:
    """Set (or remove) a team's quota; its spend so far is kept."""
    with user_errors():
        from chipfit.server.quota import parse_quota

        team = _service(data_dir, store).set_quota(name, parse_quota(quota))
        limit = f"${team.quota_usd:g}" if team.quota_usd is not None else "none"
        out_console.print(f"team {team.name}: quota {limit}, spent ${team.spent_usd:.4g}", highlight=False)


@team_app.command("rotate-token")
def team_rotate_token(
    name: Annotated[str, typer.Argument(help="The team's name (or id).")], data_dir: DataDir, store: StoreUrl = None
) -> None:
    """Give the team a new token, printed once as the last word; the old token and its sessions stop working."""
    with user_errors():
        token = _service(data_dir, store).rotate_token(name)
        out_console.print(f"new token for {name} (shown once): {token}", highlight=False)
