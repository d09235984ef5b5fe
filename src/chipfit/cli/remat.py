"""``chipfit remat``: train within a memory budget by recomputing activations (Checkmate-style plan)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from chipfit.cli.common import app, err_console, out_console, setup_logging, user_errors


@app.command()
def remat(
    model: Annotated[str, typer.Argument(help="FILE.py:build — a function returning the torch.nn.Module to train.")],
    inputs: Annotated[
        list[str],
        typer.Option(
            "--inputs",
            help="An input of the module as name:dtype\\[dims] with B the batch, e.g. 'x:float32[B,256]'; repeat for "
            "several. Integer inputs may add <HIGH for their range: 'ids:int64[B,128]<32000'.",
        ),
    ],
    budget_mb: Annotated[
        float,
        typer.Option(
            help="Memory the training step may use (MB = 2^20 bytes): parameters, gradients, optimizer state, activations."
        ),
    ],
    batch: Annotated[int | None, typer.Option(help="Compare the plain step and the plan at this batch.")] = None,
    max_batch: Annotated[
        bool, typer.Option("--max-batch", help="Find the largest batch that fits, with and without the plan.")
    ] = False,
    loss: Annotated[
        str | None, typer.Option(help="FILE.py:fn computing the loss from the outputs (default: their mean).")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd or adam (Adam's two state tensors count in the budget).")] = "sgd",
    solver: Annotated[str, typer.Option(help="auto, milp, lp-rounding or segmented.")] = "auto",
    time_limit: Annotated[float, typer.Option(help="Seconds the solver may take per plan.")] = 30.0,
    device: Annotated[
        str, typer.Option(help="cpu, or cuda to measure on the GPU (torch.cuda.max_memory_allocated).")
    ] = "cpu",
    resolution: Annotated[
        float,
        typer.Option(
            help="With --max-batch: stop when the largest batch is known within this fraction (the plan's search: "
            "twice it; each of its steps traces, solves and measures)."
        ),
    ] = 1 / 32,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Fit a training step into a memory budget by recomputing activations, not storing them all.

    Traces one training step of the module (forward, loss, backward, optimizer step), solves which activations to
    keep and which to recompute (Checkmate's MILP with HiGHS, or its LP relaxation with two-phase rounding for large
    graphs), and measures the step with and without the plan in a fresh worker process: peak memory (resident
    high-water mark on CPU, max_memory_allocated on a GPU) and step time. A plan whose measured peak exceeds the
    budget is re-solved against a tighter budget. With --max-batch, reports the largest batch each fits."""
    setup_logging(quiet)
    with user_errors():
        from chipfit.errors import SpecError
        from chipfit.remat.compare import run_remat
        from chipfit.remat.step import StepSpec, load_ref, parse_inputs

        if solver not in ("auto", "milp", "lp-rounding", "segmented"):
            raise SpecError(f"--solver must be auto, milp, lp-rounding or segmented; got {solver!r}.")
        if device != "cpu" and not device.startswith("cuda"):
            raise SpecError(f"--device must be cpu or cuda (cuda:N); got {device!r}.")
        if not 0 < resolution < 1:
            raise SpecError(f"--resolution must be a fraction between 0 and 1, such as 0.05; got {resolution!r}.")
        if not time_limit > 0:
            raise SpecError(f"--time-limit must be a positive number of seconds; got {time_limit!r}.")
        spec = StepSpec(model, parse_inputs(inputs), loss, optimizer)
        load_ref(spec.build, "the model", default="build")  # a missing file or function fails before torch work
        if loss:
            load_ref(loss, "--loss", default="loss")

        def progress(line: str) -> None:
            if not quiet:
                err_console.print(line, highlight=False, markup=False, soft_wrap=True)

        with _stdout_to_stderr(json_out):  # a library's banner on stdout must not break the JSON
            report = run_remat(
                spec,
                budget_mb,
                batch=batch,
                find_max=max_batch,
                solver=solver,
                time_limit_s=time_limit,
                device=device,
                resolution=resolution,
                progress=progress,
            )
        doc = report.to_json()
        if json_out:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        _print(doc)


@contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """File descriptor 1 pointed at 2 meanwhile (what C libraries print goes to stderr)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _print(d: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"chipfit remat · budget {d['budget_mb']:g} MB · {d['device']} · {d['optimizer']}")
    t.add_column("")
    t.add_column("as is", justify="right")
    t.add_column("with plan", justify="right")
    at = f" (batch {d['batch']})"
    if d["max_batch"] is not None:
        t.add_row("largest batch that fits", _f(d["baseline_max_batch"]), _f(d["max_batch"]))
        t.add_row(
            "peak MB, measured", f"{_f(d['baseline_peak_mb'])}{at}", f"{_f(d['peak_mb'])} (batch {d['max_batch']})"
        )
    else:
        t.add_row("peak MB, measured", _f(d["baseline_peak_mb"]), _f(d["peak_mb"]))
    t.add_row("peak MB, predicted", "", _f(d["predicted_peak_mb"]))
    t.add_row(f"step ms{at}", _f(d["baseline_step_ms"]), _f(d["step_ms"]))
    ratio = d.get("step_ratio")
    t.add_row("step time ratio", "1", _f(ratio, 3) if ratio else "–")
    t.add_row("recompute overhead, predicted", "", f"{d['overhead']:.1%}" if d["overhead"] is not None else "–")
    out_console.print(t)
    gap = d["optimality_gap"]
    out_console.print(
        f"solver: {d['solver']}"
        + (f" (optimality gap {gap:.2%})" if gap is not None else "")
        + (f"; minimum budget for this batch {d['min_budget_mb']:.4g} MB" if d["min_budget_mb"] else "")
        + (f"; re-solved {d['resolves']}× after measuring" if d["resolves"] else ""),
        soft_wrap=True,
    )
    rec = d["recomputed"]
    shown = ", ".join(rec[:12]) + (f", … ({len(rec)} in all)" if len(rec) > 12 else "")
    out_console.print(f"recomputed: {shown or 'nothing (the step fits as it is)'}", soft_wrap=True, highlight=False)
    if not d["fits"]:
        out_console.print(f"[bold red]the measured peak exceeds {d['budget_mb']:g} MB[/]")
    out_console.print(
        f"[dim]peaks measured in a fresh worker process (on CPU: resident high-water mark above the idle worker "
        f"with torch imported; margin: {d['drift_mb']:.2g} MB of freed memory left resident between probes)[/]",
        soft_wrap=True,
    )
    for note in d["notes"]:
        out_console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
