"""Budgets in resource units (``--budget 500units``: epochs or steps, whatever the space's resource counts) and
the space's choice of pruner (ASHA or Hyperband): the real driver loop on a manual clock, trials inline."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from chipfit.errors import SpecError
from chipfit.explore import Budget, parse_budget
from chipfit.explore.space import load_space
from chipfit.explore.studies import pruner
from explore_inline import SPACE, ManualClock, Plan, run_inline, space_file


@pytest.mark.parametrize(("text", "amount"), [("500units", 500.0), ("1 unit", 1.0), ("27UNITS", 27.0)])
def test_unit_budgets_parse(text: str, amount: float) -> None:
    assert parse_budget(text) == Budget(amount, "units")


def test_a_budget_in_units_trains_exactly_that_many_units_whatever_the_clock(tmp_path: Path) -> None:
    # 6 units per trial, 20 units: three trials complete (18), the fourth may train 2 and is stopped there.
    (tmp_path / "slow").mkdir()
    (tmp_path / "fast").mkdir()
    slow, fast = [
        run_inline(p, Budget(20, "units"), {}, Plan(6, step_s, 0.5), clock=ManualClock(), concurrency=1)
        for p, step_s in ((tmp_path / "slow", 50.0), (tmp_path / "fast", 0.5))
    ]
    for run in (slow, fast):
        trials = run.study.get_trials(deepcopy=False)
        assert run.stopped_by == "budget" and run.meter.spent == run.meter.units == 20
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
        assert trials[3].user_attrs["status"] == "stopped" and max(trials[3].intermediate_values) == 2
        assert "resource units are spent" in trials[3].user_attrs["reason"]
        assert [t.user_attrs["charged_units"] for t in trials] == [6, 6, 6, 2]
    assert slow.meter.wall_s > 50 * fast.meter.wall_s  # the clock differed 100×; the units spent did not


def test_pruned_trials_are_charged_the_units_they_trained(tmp_path: Path) -> None:
    # ASHA prunes most trials at the first rung: each is charged what it reported, and the budget still holds.
    plans = {n: Plan(6, 1.0, q) for n, q in enumerate((0.9, 0.05, 0.04, 0.03, 0.02, 0.01))}
    run = run_inline(tmp_path, Budget(15, "units"), plans, Plan(6, 1.0, 0.01), clock=ManualClock(), concurrency=1,
                     prune=True)  # fmt: skip
    trials = run.study.get_trials(deepcopy=False)
    charged = [t.user_attrs["charged_units"] for t in trials]
    assert charged == [max(t.intermediate_values) for t in trials] and sum(charged) == run.meter.units <= 15
    assert any(t.state.name == "PRUNED" and t.user_attrs["status"] == "pruned" for t in trials)


def test_the_space_picks_the_pruner(tmp_path: Path) -> None:
    hb = load_space(space_file(tmp_path, SPACE + "pruner: hyperband\n"))
    assert isinstance(pruner(hb, True), optuna.pruners.HyperbandPruner)
    (tmp_path / "plain").mkdir()
    asha = load_space(space_file(tmp_path / "plain", SPACE))
    assert isinstance(pruner(asha, True), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(pruner(hb, False), optuna.pruners.NopPruner)
    with pytest.raises(SpecError, match="'pruner' must be asha or hyperband"):
        load_space(space_file(tmp_path, SPACE + "pruner: median\n"))


SUGGESTING = """
def train(ctx):
    noise = ctx.suggest_float("noise", 0.0, 1.0)  # define-by-run, drawn in the trial's process
    ctx.report(noise, 1)
"""


def _suggested(folder: Path, seed: int) -> list[float]:
    """What three trials' trainable suggested for itself, each trial run from its job (opened from storage)."""
    import time

    from chipfit.explore.job import TrialJob
    from chipfit.explore.studies import open_storage, open_study
    from chipfit.explore.trial import run_trial

    folder.mkdir()
    (folder / "t.py").write_text(SUGGESTING)
    (folder / "s.yaml").write_text(
        "trainable: t.py:train\nmetric: m\nresource: {min: 1, max: 1}\nsampler: random\n"
        "params:\n  a: {type: float, low: 0, high: 1}\n"
    )
    url = f"sqlite:///{folder}/s.db"
    space = load_space(folder / "s.yaml")
    study = open_study(space, open_storage(url), seed, prune=False)
    out = []
    for _ in range(3):
        trial = study.ask()
        config = space.sample(trial)
        job = TrialJob(str(folder / "s.yaml"), study.study_name, url, trial.number, config, str(folder / "c.pkl"),
                       time.time() + 60, seed=seed)  # fmt: skip
        outcome = run_trial(job)
        assert outcome.status == "complete", outcome
        out.append(float(outcome.value))
    return out


def test_what_a_trainable_suggests_itself_follows_the_studys_seed(tmp_path: Path) -> None:
    # the trial's process opens its study with a sampler seeded by the study's seed and the trial's number
    # (Optuna's default would be an unseeded TPE: the same explore command could not be repeated)
    first, again, other = (_suggested(tmp_path / n, s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert first == again and first != other and len(set(first)) == 3


HOME_TRAINABLE = """
import os
from pathlib import Path

def train(ctx):
    (Path(__file__).parent / f"home-{ctx.number}.txt").write_text(os.environ.get("CHIPFIT_HOME", ""))
    ctx.report(1.0, 1)
"""


def test_trials_run_in_the_home_of_the_run_that_started_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_run,  # type: ignore[no-untyped-def]
) -> None:
    # the forkserver keeps the environment it started with: a later run in the same process under another
    # CHIPFIT_HOME once ran its trials in the first home (whose key did not verify what the run had signed)
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "t.py").write_text(HOME_TRAINABLE)
        (folder / "s.yaml").write_text(
            "trainable: t.py:train\nmetric: m\nresource: {min: 1, max: 1}\nsampler: random\n"
            "params:\n  a: {type: float, low: 0, high: 1}\n"
        )
        monkeypatch.setenv("CHIPFIT_HOME", str(folder / "home"))
        cli_run("explore", str(folder / "s.yaml"), "--budget", "60s", "--max-trials", "1", "--json", "-q")
        assert (folder / "home-0.txt").read_text() == str(folder / "home")
