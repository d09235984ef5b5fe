"""``chipfit explore``: budgeted exploration of model configurations with ASHA early stopping."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chipfit.cli import _setup_logging, _user_errors, app, err_console, out_console


@app.command()
def explore(
    space: Annotated[Path, typer.Argument(help="The search space YAML (trainable, metric, resource, params).")],
    budget: Annotated[str, typer.Option(help="200usd, 5gpu-h, 10cpu-h or wall time (2h); never exceeded.")],
    preview: Annotated[
        bool, typer.Option("--preview", help="Show what the budget buys under ASHA; run nothing.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Folder for checkpoints and explore.json (keep it to resume).")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Catalogue target whose $/hour prices the trials (default: this machine).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = 1,
    max_trial_time: Annotated[float | None, typer.Option(help="Seconds one trial may run at most.")] = None,
    max_memory_mb: Annotated[int | None, typer.Option(help="Address-space cap of each trial's process.")] = None,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    store: Annotated[str | None, typer.Option(help="Database URL of the study (default: the results store).")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print budget, spent, unit, spent_usd, trials, winner.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Explore many configurations of a model within a budget, stopping bad ones early (ASHA). Each trial runs
    in its own process and is charged its measured time at the target's $/hour; the study is stored, so the
    same command resumes after an interruption with nothing completed lost and the money spent counted."""
    _setup_logging(quiet)
    with _user_errors():
        from chipfit.explore.budget import CostMeter, parse_budget
        from chipfit.explore.space import load_space
        from chipfit.explore.study import explore as run
        from chipfit.explore.study import preview as plan

        b = parse_budget(budget)
        if preview:
            from chipfit.hardware.catalog import get_target
            from chipfit.hardware.local import local_target

            sp = load_space(space)
            if sp.seconds_per_unit is None:
                from chipfit.errors import SpecError

                raise SpecError(f"--preview needs 'seconds_per_unit' in {space}: the time of one resource unit.")
            tgt = get_target(target) if target else local_target(measure=False)[0]
            p = plan(sp, CostMeter(b, tgt.usd_per_hour, "gpu" if tgt.gpu else "cpu"), sp.seconds_per_unit)
            if json_out:
                sys.stdout.write(json.dumps(p, indent=2) + "\n")
                return
            out_console.print(
                f"{b} on {tgt.name} buys {p['budget_left_s']:.0f}s: about [bold]{p['configurations']}[/] "
                f"configurations under ASHA (η={sp.reduction_factor}) vs {p['full_trials_without_asha']} trained "
                "fully."
            )
            for k, rung in enumerate(p["rungs"]):
                out_console.print(f"  rung {k}: {rung['resource']} units, ~{rung['configurations']} configurations")
            return

        def progress(event: str, r: dict[str, Any], meter: Any) -> None:
            if quiet:
                return
            t = r["trial"].number
            if event == "done":
                err_console.print(
                    f"trial {t}: {r['status']}{' (' + r['reason'] + ')' if r['status'] != 'complete' else ''} · "
                    f"spent {meter.spent:.4g}/{meter.budget.amount:g} {meter.budget.unit}",
                    highlight=False,
                    soft_wrap=True,
                )

        result = run(
            space,
            b,
            out=out,
            store=store,
            target=target,
            concurrency=concurrency,
            max_trial_s=max_trial_time,
            max_memory_mb=max_memory_mb,
            seed=seed,
            callback=progress,
        )
        summary = result.to_dict()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "explore.json").write_text(json.dumps(summary, indent=2, default=str))
        if json_out:
            sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
            return
        out_console.print(
            f"spent {summary['spent']:.4g} of {summary['budget']:g} {summary['unit']} (${summary['spent_usd']:.4g}); "
            f"trials: {', '.join(f'{n} {s}' for s, n in sorted(summary['trials'].items()))}"
        )
        w = summary["winner"]
        out_console.print(f"winner: trial {w['trial']} {w['value']:.4g} {w['params']}" if w else "no trial completed")
