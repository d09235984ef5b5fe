"""What every command shares: the Typer app, the consoles, logging, and how chipfit's errors are printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler

from chipfit.errors import ChipfitError

__all__ = ["app", "err_console", "out_console", "setup_logging", "user_errors"]

app = typer.Typer(
    name="chipfit",
    help="Fit a trained model to a chip under your constraints: latency, memory, accuracy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out_console = Console(width=None if sys.stdout.isatty() else 190)
err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print chipfit's own errors as one message, without a traceback, and exit with their code."""
    try:
        yield
    except ChipfitError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: measurements taken so far are stored; rerun to resume.")
        raise typer.Exit(130) from None


def setup_logging(quiet: bool) -> None:
    log = logging.getLogger("chipfit")
    if not log.handlers:
        log.addHandler(RichHandler(console=err_console, show_time=False, show_path=False))
    log.setLevel(logging.ERROR if quiet else logging.INFO)
