"""``chipfit explore``: budgeted exploration of model configurations with ASHA early stopping."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chipfit.cli.args import TrustPickle
from chipfit.cli.common import app, err_console, out_console, setup_logging, user_errors


def _seconds(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    from chipfit.errors import SpecError
    from chipfit.explore.budget import parse_budget

    try:
        b = parse_budget(text)
    except SpecError:
        b = None
    if b is None or b.unit != "s":
        raise SpecError(f"{flag} must be a wall time such as 3h, 20m or 600s; got {text!r}.")
    return b.amount


@app.command()
def explore(
    space: Annotated[Path, typer.Argument(help="The search space YAML (trainable, metric, resource, params).")],
    budget: Annotated[
        str | None,
        typer.Option(
            help="200usd, 5gpu-h, 10cpu-h, wall time (2h) or resource units (500units: the epochs or steps trials train, "
            "whatever the machine's load): the study's total, earlier runs included; never exceeded.",
        ),
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="Maximise the best trial by this wall time (3h): new trials only while they can finish, "
            "then the leaders get the cores."
        ),
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Show what the budget buys under ASHA; run nothing.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for explore.html/json and the winner's artifact (the study keeps its checkpoints and "
            "models under $CHIPFIT_HOME/explore/)."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Catalogue target: prices the trials and is where the bound applies.")
    ] = None,
    max_p99_ms: Annotated[
        float | None, typer.Option(help="Reject configurations whose model misses this p99 on the target.")
    ] = None,
    max_memory_mb: Annotated[
        float | None, typer.Option(help="Reject configurations whose model needs more memory on the target.")
    ] = None,
    train_memory_mb: Annotated[
        float | None,
        typer.Option(
            help="Memory each trial's training step may use: a configuration that does not fit trains under a remat "
            "plan (recomputing activations; its cost is charged to the trial) instead of failing; built-in recipes "
            "directly, your trainable through ctx.remat(module, example_inputs).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = 1,
    max_trial_time: Annotated[float | None, typer.Option(help="Seconds one trial may run at most.")] = None,
    trial_memory_mb: Annotated[int | None, typer.Option(help="Address-space cap of each trial's process.")] = None,
    asha: Annotated[
        bool, typer.Option(help="Stop laggards at ASHA's rungs (--no-asha: every trial runs to the end).")
    ] = True,
    deliver: Annotated[bool, typer.Option(help="Fit the winner and write its artifact to OUT/artifact.")] = True,
    backends: Annotated[str, typer.Option(help="Backends the winner's fit tries (comma-separated, or 'all').")] = (
        "onnxruntime"
    ),
    ray: Annotated[
        str | None, typer.Option(help="Run trials as Ray tasks: a cluster address, 'auto', or 'local'.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Stop once the study holds this many trials (earlier runs included).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Database URL of the study (default: the results store).")] = None,
    new_study: Annotated[
        bool,
        typer.Option(
            "--new-study", help="Start a fresh study of this space (the earlier one is kept) instead of resuming it."
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print budget, spent, unit, spent_usd, trials, winner.")
    ] = False,
    trust_pickle: TrustPickle = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Explore configurations of a model within a budget, stopping bad ones early (ASHA).

    Each trial runs in its own process (or Ray task) and is charged its measured time at the target's $/hour; the study
    is stored, so the same command resumes it (and says so) with nothing completed lost and the money spent counted:
    --budget is the study's total; --new-study starts afresh. With --max-p99-ms the budget goes only to models that meet
    it on the target, and the winner is delivered through `fit` as a deployable artifact."""
    setup_logging(quiet)
    with user_errors():
        from chipfit.explore.budget import CostMeter, parse_budget
        from chipfit.explore.job import TrialOutcome
        from chipfit.explore.loop import Running
        from chipfit.explore.space import load_space
        from chipfit.explore.study import explore as run

        b = parse_budget(budget) if budget is not None else None
        deadline_s = _seconds(deadline, "--deadline")
        if preview:
            _preview(space, b, deadline_s, target, json_out)
            return
        if out is not None:
            from chipfit.package import check_writable

            check_writable(out / "artifact")
        bk = None if backends == "all" else tuple(x.strip() for x in backends.split(",") if x.strip())

        def progress(event: str, r: Running, outcome: TrialOutcome | None, meter: CostMeter) -> None:
            if quiet or event != "done" or outcome is None:
                return
            why = f" ({outcome.reason})" if outcome.status != "complete" and outcome.reason else ""
            spent = f"{meter.spent:.4g}/{meter.budget.amount:g} {meter.budget.unit}"
            err_console.print(
                f"trial {r.number}: {outcome.status}{why} · spent {spent}",
                highlight=False,
                soft_wrap=True,
            )

        def announce(line: str) -> None:  # a resumed study says so, on one line
            if not quiet:
                err_console.print(line, highlight=False, markup=False, soft_wrap=True)

        result = run(
            space,
            b,
            deadline_s=deadline_s,
            out=out,
            store=store,
            target=target,
            concurrency=concurrency,
            max_trial_s=max_trial_time,
            trial_memory_mb=trial_memory_mb,
            max_p99_ms=max_p99_ms,
            max_memory_mb=max_memory_mb,
            deliver=deliver,
            deliver_backends=bk,
            prune=asha,
            ray=ray,
            seed=seed,
            max_trials=max_trials,
            callback=progress,
            trust_pickle=trust_pickle,
            new_study=new_study,
            announce=announce,
            train_memory_mb=train_memory_mb,
        )
        summary = result.to_dict()
        if out is not None:
            from chipfit.report.explore import write_explore_report

            write_explore_report(result, out)
        if json_out:
            sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
            return
        _print_summary(summary, load_space(space).metric, out)


def _preview(space: Path, b: Any, deadline_s: float | None, target: str | None, json_out: bool) -> None:
    from chipfit.errors import SpecError
    from chipfit.explore.budget import Budget, CostMeter
    from chipfit.explore.space import load_space
    from chipfit.explore.study import preview as plan
    from chipfit.hardware.catalog import get_target
    from chipfit.hardware.local import local_target

    sp = load_space(space)
    if sp.seconds_per_unit is None:
        raise SpecError(f"--preview needs 'seconds_per_unit' in {space}: the time of one resource unit.")
    if b is None and deadline_s is None:
        raise SpecError("--preview needs --budget (or --deadline) to say what it buys.")
    tgt = get_target(target) if target else local_target(measure=False)[0]
    p = plan(
        sp,
        CostMeter(b or Budget(deadline_s or 0.0, "s"), tgt.usd_per_hour, "gpu" if tgt.gpu else "cpu"),
        sp.seconds_per_unit,
    )
    if json_out:
        sys.stdout.write(json.dumps(p, indent=2) + "\n")
        return
    out_console.print(
        f"{b or f'{deadline_s:g} s'} on {tgt.name} buys {p['budget_left_s']:.0f}s: about "
        f"[bold]{p['configurations']}[/] configurations under ASHA (η={sp.reduction_factor}) vs "
        f"{p['full_trials_without_asha']} trained fully."
    )
    for k, rung in enumerate(p["rungs"]):
        out_console.print(f"  rung {k}: {rung['resource']} units, ~{rung['configurations']} configurations")


def _print_summary(summary: dict[str, Any], metric: str, out: Path | None) -> None:
    from rich.table import Table

    from chipfit.explore.study import amount

    t = Table(title="chipfit explore", show_header=False)
    unit = summary["unit"]
    spent = f"{amount(summary['spent'], unit)} of {amount(summary['budget'], unit)}"
    if summary["resumed"]:
        spent += f" ({amount(summary['spent_before'], unit)} by earlier runs of this study)"
    if unit != "usd":
        spent += f" · ${summary['spent_usd']:.4g}"
    t.add_row("spent", spent)
    t.add_row("study", summary["study"])
    t.add_row("stopped by", summary["stopped_by"])
    t.add_row("trials", ", ".join(f"{n} {s}" for s, n in sorted(summary["trials"].items())))
    w = summary["winner"]
    if w:
        t.add_row("winner", f"trial {w['trial']}: {metric} {w['value']:.4g}")
        t.add_row(
            "params", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in w["params"].items())
        )
        if w.get("hardware"):
            t.add_row("bound", w["hardware"]["detail"])
    else:
        t.add_row("winner", "no trial completed")
    if summary.get("artifact"):
        t.add_row("artifact", summary["artifact"])
    for note in summary.get("notes") or []:
        t.add_row("note", note)
    if out is not None:
        t.add_row("report", str(out / "explore.html"))
    out_console.print(t)
