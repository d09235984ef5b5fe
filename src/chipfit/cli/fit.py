"""``chipfit version``, ``chipfit fit`` and ``chipfit backends``: thin wrappers over the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chipfit.cli.args import MaxCost, MaxEnergy, Predict, TrustPickle, ints, passes_list, words
from chipfit.cli.common import app, err_console, out_console, setup_logging, user_errors
from chipfit.errors import ChipfitError

__all__ = ["backends", "fit", "version"]


@app.command()
def version() -> None:
    """Print chipfit's version."""
    from chipfit import __version__

    out_console.print(__version__)


@app.command()
def fit(
    model: Annotated[
        Path, typer.Argument(help="The model: an .onnx file (external data beside it) or a .pt2 ExportedProgram.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Evaluation data: an .npz (one array per model input, named as the input, optional 'labels') or a folder of .npy files."
        ),
    ],
    spec: Annotated[
        Path | None,
        typer.Option(help="YAML spec file with the same keys as the flags (max_p99_ms: 20 ...). Flags override it."),
    ] = None,
    calib_data: Annotated[
        Path | None,
        typer.Option(help="Separate calibration data; by default a slice of --data, disjoint from evaluation."),
    ] = None,
    max_p50_ms: Annotated[
        float | None,
        typer.Option(help="Bound on median latency (ms) at the candidate's batch size.", rich_help_panel="Constraints"),
    ] = None,
    max_p99_ms: Annotated[
        float | None, typer.Option(help="Bound on 99th-percentile latency (ms).", rich_help_panel="Constraints")
    ] = None,
    min_throughput: Annotated[
        float | None,
        typer.Option(help="Lower bound on throughput (samples/s, single stream).", rich_help_panel="Constraints"),
    ] = None,
    max_memory_mb: Annotated[
        float | None,
        typer.Option(
            help="Bound on the peak memory the model adds to its process (MB).", rich_help_panel="Constraints"
        ),
    ] = None,
    max_size_mb: Annotated[
        float | None, typer.Option(help="Bound on the model's size on disk (MB).", rich_help_panel="Constraints")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            help="Largest absolute accuracy drop vs the original model (needs labels), e.g. 0.01.",
            rich_help_panel="Constraints",
        ),
    ] = None,
    min_fidelity: Annotated[
        float | None,
        typer.Option(
            help="Smallest fidelity to the original model's outputs (1 = identical).", rich_help_panel="Constraints"
        ),
    ] = None,
    max_cost_per_1m: MaxCost = None,
    max_energy_mj: MaxEnergy = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="What the winner is best at among feasible candidates: latency, throughput, memory, size, "
            "accuracy, cost ($ per 1M inferences on this machine), energy (mJ per inference).",
            rich_help_panel="Constraints",
        ),
    ] = None,
    time_budget: Annotated[
        str | None,
        typer.Option(
            help="Time for the whole run, e.g. '10m': a candidate starts only when the time left covers its "
            "estimated cost (the slowest measured so far), so the run ends within the budget plus at most one "
            "--timeout; the others are listed as skipped.",
            rich_help_panel="Constraints",
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Accuracy metric against labels: top1, top5 (any topK), mse, f1. Default: top1 for class labels, else mse.",
            rich_help_panel="Quality",
        ),
    ] = None,
    fidelity_metric: Annotated[
        str | None,
        typer.Option(
            help="Fidelity to the original's outputs: cosine (default), agreement (argmax), max_rel_error.",
            rich_help_panel="Quality",
        ),
    ] = None,
    eval_samples: Annotated[
        int | None,
        typer.Option(min=1, help="Evaluate quality on at most this many samples.", rich_help_panel="Quality"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the deployable artifact: model, manifest.json, results.jsonl, report.html."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout (progress stays on stderr).")
    ] = False,
    backends: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated backends to try: onnxruntime, openvino, tvm, torch, null, or a plug-in "
            "'module:attribute'. Default: every available one (see `chipfit backends`). ONNX Runtime's default "
            "session is always measured as the baseline.",
            rich_help_panel="Search space",
        ),
    ] = None,
    tune_trials: Annotated[
        int,
        typer.Option(
            min=0,
            help="Auto-tuning budget for compilers that tune (TVM MetaSchedule): trials per operator task. 0: no "
            "tuning (untuned TVM is listed and left to the latency probe). The tuning database is kept and reused.",
            rich_help_panel="Search space",
        ),
    ] = 0,
    tune_time: Annotated[
        str | None,
        typer.Option(
            help="Wall-time cap for one candidate's tuning, e.g. '10m' (checked between tuning rounds).",
            rich_help_panel="Search space",
        ),
    ] = None,
    batch_sizes: Annotated[
        str,
        typer.Option(
            help="Batch sizes to measure (larger ones need a dynamic batch dimension).", rich_help_panel="Search space"
        ),
    ] = "1,8,32",
    threads: Annotated[
        str | None,
        typer.Option(
            help="Intra-op thread counts, e.g. '1,2'. Default: 1, 2, 4 ... up to the container's CPU quota.",
            rich_help_panel="Search space",
        ),
    ] = None,
    opt_levels: Annotated[
        str | None,
        typer.Option(
            help="Graph variants: none (as given), basic, extended, all (ONNX Runtime levels applied offline).",
            rich_help_panel="Search space",
        ),
    ] = None,
    execution_modes: Annotated[
        str | None, typer.Option(help="sequential, parallel.", rich_help_panel="Search space")
    ] = None,
    passes: Annotated[
        str | None,
        typer.Option(
            help="Precision and fusion passes to try: transformer_fusion, int8_dynamic, int8_static, nncf_int8 (OpenVINO), "
            "fp16, or 'none' "
            "for fp32 graph variants only. Default: all that suit the model and CPU (fp16 only with fast fp16; "
            "naming it measures it anyway).",
            rich_help_panel="Search space",
        ),
    ] = None,
    batch_sweep_top: Annotated[
        int,
        typer.Option(
            min=1,
            help="Measure batch sizes above the first only for this many fastest configurations.",
            rich_help_panel="Search space",
        ),
    ] = 3,
    measure_time: Annotated[
        float,
        typer.Option(min=0.05, help="Time cap (s) for timing one candidate once warm.", rich_help_panel="Measurement"),
    ] = 2.0,
    timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="Kill a candidate's worker after this many seconds and record a timeout.",
            rich_help_panel="Measurement",
        ),
    ] = 300.0,
    memory_limit_mb: Annotated[
        int | None,
        typer.Option(
            min=64,
            help="Address-space cap of each worker (MB); past it the candidate is recorded as oom.",
            rich_help_panel="Measurement",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL of the results store. Default: sqlite under $CHIPFIT_HOME or ~/.cache/chipfit.",
            rich_help_panel="Measurement",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(help="Measure again candidates stored as failed, timeout or oom.", rich_help_panel="Measurement"),
    ] = False,
    fresh: Annotated[
        bool, typer.Option(help="Ignore stored results and measure everything again.", rich_help_panel="Measurement")
    ] = False,
    predict: Predict = True,
    farm: Annotated[
        str | None,
        typer.Option(
            help="Measure on a device farm instead of here: its address, host:port (see `chipfit farm up`).",
            rich_help_panel="Farm",
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            help="With --farm: the catalogue targets to fit for, comma-separated, or 'all' (every target in the "
            "farm). One winner per target; OUT/<target>/ holds each artifact.",
            rich_help_panel="Farm",
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")] = False,
) -> None:
    """Measure variants of MODEL here and deliver the best one that meets the constraints.

    Exit code 0: a winner was delivered; 1: no candidate met the constraints (the nearest misses are listed);
    2: bad input (the message says what to fix).
    """
    setup_logging(quiet)
    with user_errors():
        from chipfit.backends import parse_backends
        from chipfit.cli.output import fit_progress, print_fit_result
        from chipfit.measure.stats import TimingPolicy
        from chipfit.pipeline import fit as run_fit
        from chipfit.search.driver import MeasureSettings
        from chipfit.search.space import SpaceOptions
        from chipfit.spec import parse_duration

        try:
            tune_time_s = parse_duration(tune_time) if tune_time is not None else None
        except ValueError as exc:
            raise ChipfitError(f"--tune-time {exc}.") from None
        space = SpaceOptions(
            backends=parse_backends(backends),
            tune_trials=tune_trials,
            tune_time_s=tune_time_s,
            batch_sizes=ints(batch_sizes, "--batch-sizes") or (1,),
            threads=ints(threads, "--threads"),
            opt_levels=words(opt_levels, "--opt-levels", ("none", "basic", "extended", "all")),
            execution_modes=words(execution_modes, "--execution-modes", ("sequential", "parallel")),
            passes=passes_list(passes),
        )
        settings = MeasureSettings(
            timing=TimingPolicy(max_time_s=measure_time),
            timeout_s=timeout,
            memory_limit_mb=memory_limit_mb,
            eval_limit=eval_samples,
            batch_sweep_top=batch_sweep_top,
            retry_failed=retry_failed,
            fresh=fresh,
            predict=predict,
        )
        overrides: dict[str, Any] = {
            "max_p50_ms": max_p50_ms,
            "max_p99_ms": max_p99_ms,
            "min_throughput": min_throughput,
            "max_memory_mb": max_memory_mb,
            "max_size_mb": max_size_mb,
            "max_accuracy_drop": max_accuracy_drop,
            "min_fidelity": min_fidelity,
            "max_cost_per_1m": max_cost_per_1m,
            "max_energy_mj": max_energy_mj,
            "objective": objective,
            "time_budget": time_budget,
            "metric": metric,
            "fidelity_metric": fidelity_metric,
        }
        if targets is not None and farm is None:
            raise ChipfitError("--targets needs --farm ADDRESS (the farm whose nodes measure them).")
        if farm is not None:
            from chipfit.cli.farm import fit_on_farm

            fit_on_farm(
                model,
                data,
                spec,
                farm,
                targets,
                out,
                calib_data,
                space,
                settings,
                store,
                quiet,
                json_out,
                trust_pickle,
                overrides,
            )
            return
        with fit_progress(err_console, enabled=not quiet) as callback:
            result = run_fit(
                model,
                data,
                spec,
                out=out,
                calib_data=calib_data,
                space=space,
                settings=settings,
                store=store,
                callback=callback,
                progress=False,  # shown by fit_progress above (or not at all with --quiet)
                trust_pickle=trust_pickle,
                **overrides,
            )
        if json_out:
            sys.stdout.write(json.dumps(result.to_dict(), default=str) + "\n")
        else:
            print_fit_result(out_console, result)
        if not result.feasible:
            raise typer.Exit(1)


@app.command()
def backends(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list of backends on stdout.")] = False,
) -> None:
    """List the backends: whether each runs here, its version and devices.

    A backend that cannot run here says why: what to install, or which device is missing."""
    with user_errors():
        from chipfit.backends import BUILTIN, backend_info

        infos = [backend_info(n) for n in BUILTIN]
        if json_out:
            keys = ("name", "available", "reason", "version", "devices")
            sys.stdout.write(json.dumps([{k: i.to_dict()[k] for k in keys} for i in infos], indent=2) + "\n")
            return
        from rich.table import Table

        table = Table(title="chipfit backends")
        for col in ("backend", "available", "version", "devices", "dtypes", "dynamic batch", "why not / note"):
            table.add_column(col, overflow="fold")
        for i in infos:
            note = i.reason or ("reference interpreter; measured only with --backends null" if i.name == "null" else "")
            table.add_row(
                i.name,
                "[green]yes[/]" if i.available else "[red]no[/]",
                i.version or "-",
                ", ".join(i.devices) or "-",
                ", ".join(i.dtypes),
                "yes" if i.dynamic_shapes else "no",
                note,
            )
        out_console.print(table)
