"""Prediction commands of the CLI: ``chipfit predict calibrate`` (micro-benchmarks for the kernel-level
predictor on this machine), ``chipfit predict-eval`` (how good the latency predictor is, on held-out models)
and ``chipfit recommend`` (which hardware fits best, measured here and predicted elsewhere)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from chipfit.cli.args import MaxCost, MaxEnergy
from chipfit.cli.common import app, err_console, out_console, setup_logging, user_errors

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Results store URL (default: the SQLite file in the chipfit home).")
]


def phase_logger(enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """One line on stderr per phase of a long command, with the seconds since the first. In a terminal a
    per-item line (``... (i/n)``) is shown for the first and last item only; elsewhere (a log, CI) every line."""
    start = clock()
    counter = re.compile(r"\((\d+)/(\d+)\)$")

    def say(line: str) -> None:
        if not enabled:
            return
        m = counter.search(line)
        if err_console.is_terminal and m and m.group(1) not in ("1", m.group(2)):
            return
        err_console.print(f"[dim]{clock() - start:6.1f}s[/] {line}", highlight=False, soft_wrap=True)

    return say


predict_app = typer.Typer(
    help="The kernel-level latency predictor of this machine.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(predict_app, name="predict")


@predict_app.command("calibrate")
def calibrate_cmd(
    max_minutes: Annotated[
        float, typer.Option("--max-minutes", help="Time for the micro-benchmarks, in minutes (a calibration: 20-30).")
    ] = 20.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again even when this machine is calibrated.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the calibration's summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Measure kernel micro-benchmarks on this machine for the kernel-level latency predictor.

    Seed models (MLPs, CNNs, BERT-like encoders; fp32 and int8; batch 1-32) are optimized by ONNX Runtime as a candidate would be; each kernel of the optimized graph gets its own time from ONNX Runtime's profiler over repeated runs, and the whole seed model is timed beside it (median of 5 interleaved rounds, their CV the noise floor); more seeds are drawn near those predicted worst, within --max-minutes. The result is cached per machine (CPU, cores, ONNX Runtime version) under the chipfit home and reused: `chipfit fit` and `chipfit recommend` then predict ONNX Runtime candidates from their kernels."""
    with user_errors():
        from chipfit.errors import SpecError
        from chipfit.predict.calibrate import calibrate, summary

        if not (max_minutes > 0 and max_minutes <= 24 * 60):
            raise SpecError(
                f"--max-minutes must be a number of minutes above 0 and at most 1440; got {max_minutes!r}. "
                "A calibration takes 20-30 (--max-minutes 20)."
            )
        say = phase_logger(not quiet)
        data, reused = calibrate(max_minutes, fresh=fresh, progress=say)
        report = {"reused": reused, "created": data.get("created"), **summary(data)}
        if json_out:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
            return
        from rich.table import Table

        h = report["heldout_models"]
        title = (
            f"calibration of this machine ({'reused, ' if reused else ''}{report['seconds']:.0f}s): "
            f"{report['kernel_timings']} kernel timings of {report['seeds']} seed models"
        )
        table = Table(title=title)
        for col in ("kernel type", "timings", "noise (CV)", "held-out median |error|"):
            table.add_column(col, justify="right")
        for op, m in report["ops"].items():
            ape = m["heldout_median_ape"]
            table.add_row(op, str(m["n"]), f"{m['noise_cv']:.1%}", "–" if ape is None else f"{ape:.1%}")
        out_console.print(table)
        if h.get("n"):
            out_console.print(
                f"whole seed models predicted from their kernels (held out by seed): {h['within_10pct']:.0%} within "
                f"±10%, median |error| {h['median_ape']:.1%}, noise floor (CV of repeats) {h['noise_cv']:.1%}",
                highlight=False,
            )


@app.command("predict-eval")
def predict_eval_cmd(
    store: StoreOpt = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds of the grouped k-fold (models are never split).")] = 5,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print n, within_10pct, median_ape, spearman as JSON.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Score the latency predictor on the measurements in the store, model by held-out model.

    Trained on some models, scored on the others' measured p50 (grouped k-fold). Reports the share within ±10%, the
    median absolute percentage error (median_ape) and Spearman's rank correlation."""
    with user_errors():
        from chipfit.predict import predict_eval, training_rows
        from chipfit.store import Store

        say = phase_logger(not quiet)
        say("reading the store's measurements (and this machine's peak rates)")
        rows = training_rows(Store(store))
        say(f"evaluating the predictor on held-out models: {len(rows)} measurements, {folds} folds")
        report = predict_eval(rows, folds, progress=lambda i, k: say(f"trained and scored fold ({i}/{k})"))
        report["kernel_level"] = _kernel_level(say)
        if json_out:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
            return
        k = report["kernel_level"]
        if k.get("n"):
            out_console.print(
                f"kernel-level predictor (this machine's calibration, {k['models']} seed models held out by model, "
                f"{k['folds']}-fold): {k['within_10pct']:.0%} within ±10%, median |error| {k['median_ape']:.1%}, "
                f"Spearman {_fmt(k['spearman'])}; noise floor (CV of the repeats) {k['noise_cv']:.1%}",
                highlight=False,
            )
        else:
            out_console.print(f"[dim]kernel-level predictor: {k.get('note', 'not evaluated')}[/]")
        if not report["n"]:
            out_console.print(f"[yellow]{report['note']}[/] ({report['models']} model(s) in the store)")
            return
        from rich.table import Table

        table = Table(title=f"predictor on held-out models: {report['n']} measurements of {report['models']} models")
        for col in ("model", "n", "within ±10%", "median |error|", "Spearman"):
            table.add_column(col, justify="right")
        for name, m in report["per_model"].items():
            table.add_row(name, str(m["n"]), f"{m['within_10pct']:.0%}", f"{m['median_ape']:.1%}", _fmt(m["spearman"]))
        table.add_row(
            "[bold]all[/]",
            str(report["n"]),
            f"[bold]{report['within_10pct']:.0%}[/]",
            f"[bold]{report['median_ape']:.1%}[/]",
            f"[bold]{_fmt(report['spearman'])}[/]",
        )
        out_console.print(table)
        if report.get("noise_floor") is not None:
            out_console.print(
                f"noise floor: the measured p50s' 95% CI half-width is {report['noise_floor']:.1%} of the p50 (median)",
                highlight=False,
            )


def _kernel_level(say: Callable[[str], None]) -> dict[str, Any]:
    """The kernel-level predictor scored on its calibration's seed models, held out by model (grouped k-fold)."""
    from chipfit.predict.calibrate import heldout_models, load_calibration

    data = load_calibration()
    if data is None:
        return {"n": 0, "note": "this machine is not calibrated: run `chipfit predict calibrate`"}
    say("evaluating the kernel-level predictor on its calibration's seed models (held out by model)")
    return heldout_models(data)


def _fmt(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


@app.command()
def recommend(
    model: Annotated[Path, typer.Argument(help="The model: an .onnx file or a .pt2 ExportedProgram.")],
    data: Annotated[Path, typer.Option(help="Evaluation data (.npz), as for `chipfit fit`.")],
    max_p50_ms: Annotated[float | None, typer.Option(help="Bound on median latency (ms).")] = None,
    max_p99_ms: Annotated[float | None, typer.Option(help="Bound on 99th-percentile latency (ms).")] = None,
    min_throughput: Annotated[
        float | None, typer.Option(help="Requests/s to serve in total; sets the instances needed per target.")
    ] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Largest accuracy drop (needs labels).")] = None,
    min_fidelity: Annotated[float | None, typer.Option(help="Smallest fidelity to the original outputs.")] = None,
    max_cost_per_1m: MaxCost = None,
    max_energy_mj: MaxEnergy = None,
    objective: Annotated[
        str, typer.Option(help="Rank by: cost ($/1M inferences), latency, energy, throughput.")
    ] = "cost",
    targets: Annotated[str | None, typer.Option(help="Only these catalogue targets (comma-separated).")] = None,
    catalog: Annotated[list[Path] | None, typer.Option("--catalog", help="Extra catalogue YAML file(s).")] = None,
    backends: Annotated[str | None, typer.Option(help="Backends measured here (default: every available one).")] = None,
    time_budget: Annotated[str | None, typer.Option(help="Time for the measurements here, e.g. '5m'.")] = None,
    store: StoreOpt = None,
    farm: Annotated[
        str | None,
        typer.Option(
            "--farm",
            help="A device farm's address (host:port, see `chipfit farm up`): the targets present in it are measured on "
            "their nodes, the predictor is retrained with those measurements and its error per target is reported.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write recommend.html and recommend.json to this folder.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the ranked targets as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Rank the hardware targets for MODEL under the constraints, by cost, latency or energy.

    Measured on this machine, predicted (with the predictor's held-out error) on every catalogue target, ranked by cost,
    latency or energy. Exit 1 when no target meets every bound."""
    setup_logging(quiet)
    with user_errors():
        from chipfit.backends import parse_backends
        from chipfit.cli.output import fit_progress
        from chipfit.errors import SpecError
        from chipfit.recommend import recommend as run
        from chipfit.search.space import SpaceOptions

        if objective not in ("cost", "latency", "energy", "throughput"):
            raise SpecError(f"--objective must be one of cost, latency, energy, throughput; got {objective!r}.")
        names = tuple(t.strip() for t in (targets or "").split(",") if t.strip())
        say = phase_logger(not quiet)
        with fit_progress(err_console, enabled=not quiet) as callback:
            rec = run(
                model,
                data,
                targets=names,
                catalog=tuple(str(c) for c in catalog or ()),
                min_throughput=min_throughput,
                objective=objective,
                progress=say,
                farm=farm,
                fit_kwargs={
                    "space": SpaceOptions(backends=parse_backends(backends)),
                    "store": store,
                    "callback": callback,
                    "time_budget": time_budget,
                },
                max_p50_ms=max_p50_ms,
                max_p99_ms=max_p99_ms,
                max_accuracy_drop=max_accuracy_drop,
                min_fidelity=min_fidelity,
                max_cost_per_1m=max_cost_per_1m,
                max_energy_mj=max_energy_mj,
            )
        if out is not None:
            from chipfit.report.recommend import write_recommendation

            say(f"writing recommend.html and recommend.json to {out}")
            write_recommendation(rec, out)
        if json_out:
            sys.stdout.write(json.dumps(rec.to_dict(), indent=2, default=str) + "\n")
        else:
            print_recommendation(rec)
        if not any(t["meets"] for t in rec.targets):
            raise typer.Exit(1)


def print_recommendation(rec: Any) -> None:
    """The ranked targets as a table as wide as the terminal (numbers whole; columns left out are named), then
    what the rows rest on, said once."""
    from chipfit.cli.recommend_table import recommend_table

    table, hidden = recommend_table(rec.targets, rec.objective, out_console.width)
    out_console.print(table)
    if hidden:
        out_console.print(f"[dim]not shown at this width: {', '.join(hidden)} (see --json or --out)[/]")
    b = rec.basis
    p = rec.predictor
    spearman = f", Spearman {_fmt(p['spearman'])}" if p.get("n") else ""
    machine = re.sub(r" with ISA \[[^\]]*\]", "", b["this_machine"])
    out_console.print(
        f"[dim]this machine: {machine}\npredicted: {b['predicted']}\nerror bars: {b['error']}{spearman}"
        f"\nclamped: {b['clamp']}[/]",
        highlight=False,
    )
    for name, t in (rec.farm.get("targets") or {}).items():
        err = "–" if t["median_ape"] is None else f"±{t['median_ape']:.0%}"
        how = "declared" if t["declared"] else "measured"
        out_console.print(
            f"[dim]farm {name} ({how}): predictor error {err} (median over {t['n']} measured candidates)[/]",
            highlight=False,
        )
