"""What every command shares: the Typer app, the consoles, logging, and how chipfit's errors are printed."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer.core import TyperGroup

from chipfit.errors import ChipfitError

__all__ = ["app", "err_console", "out_console", "reflow", "setup_logging", "user_errors"]


# click's exception base, whether typer vendors click (0.29+) or uses the click package
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(TyperGroup):
    """Usage errors (a missing argument, a flag that is not a number) as one line, like chipfit's own errors,
    instead of a usage box: ``error: Missing argument 'model'. See 'chipfit fit --help'.`` Exit code 2.

    Also reflows each command's help (see :func:`reflow`) so that it wraps at the terminal's width."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and cmd.help:
            cmd.help = reflow(cmd.help)
        return cmd

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as exc:
            ctx: Any = getattr(exc, "ctx", None)
            code = int(getattr(exc, "exit_code", 2))
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `chipfit` alone: the help
                print(ctx.get_help(), file=sys.stderr)
                sys.exit(code)
            message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).rstrip()
            message += "" if message.endswith((".", ")")) else "."
            where = f" See '{ctx.command_path} --help'." if ctx is not None else ""
            err_console.print(
                f"[bold red]error:[/] {_escape(message)}{_escape(where)}", highlight=False, soft_wrap=True
            )
            sys.exit(code)
        except typer.Abort:
            err_console.print("[yellow]aborted[/]")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def reflow(text: str) -> str:
    """A docstring with each paragraph on one line. Rich markup mode keeps a docstring's line breaks, so a
    paragraph wrapped in the source would break mid-sentence in ``--help``; one line per paragraph lets the
    terminal's width decide. A paragraph that starts with ``\\b`` keeps its lines (click's convention)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


app = typer.Typer(
    name="chipfit",
    cls=OneLineErrors,
    help="Fit a trained model to a chip under your constraints: latency, memory, accuracy, cost.",
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
