"""chipfit explore: budgets parsed and never exceeded (on a manual clock), ASHA stopping laggards, the trial
job and outcome contract, the spending recorded as it goes so that a kill -9 loses none of it, and one real
run: failing trainables recorded while the study goes on, kill -9 then the same command resumes with nothing
completed lost and the killed run's spending counted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from chipfit.errors import SpecError
from chipfit.explore import Budget, parse_budget
from chipfit.explore.budget import CostMeter
from chipfit.explore.job import (
    TRIAL_PROTOCOL,
    HardwareBound,
    ProtocolError,
    TrialJob,
    TrialOutcome,
    dumps,
    load_job,
    load_outcome,
)
from chipfit.explore.ledger import Ledger
from chipfit.explore.space import load_space
from chipfit.explore.studies import INTERRUPTED, open_study
from explore_inline import ManualClock, Plan, run_inline, space_file, torch_threads

TRAINABLE = """
import math, time

def train(ctx):
    if ctx.number == 1:
        raise RuntimeError("boom in the trainable")
    extra = ctx.suggest_float("noise", 0.0, 0.01)          # define-by-run
    state = ctx.load_checkpoint() or {"step": 0}
    for step in range(state["step"] + 1, ctx.max_resource + 1):
        if ctx.number == 2:
            ctx.report(float("nan"), step)
        acc = 1 - math.exp(-ctx.config["quality"] * step) + extra
        ctx.checkpoint({"step": step})
        ctx.report(acc, step)
        if ctx.number == 0:
            time.sleep(600)  # reports once, then runs on until the run is killed
"""

SPACE = """
trainable: trainable.py:train
metric: accuracy
direction: maximize
resource: {min: 1, max: 9}
reduction_factor: 3
seconds_per_unit: 0.05
sampler: random
params:
  quality: {type: float, low: 0.01, high: 1.0}
"""


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    (tmp_path / "trainable.py").write_text(TRAINABLE)
    (tmp_path / "space.yaml").write_text(text)
    return tmp_path / "space.yaml"


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("200usd", Budget(200, "usd")),
        ("$3.5", Budget(3.5, "usd")),
        ("5gpu-h", Budget(5, "gpu-h")),
        ("0.1cpu-h", Budget(0.1, "cpu-h")),
        ("2h", Budget(7200, "s")),
        ("90m", Budget(5400, "s")),
    ],
)
def test_budgets_parse(text: str, budget: Budget) -> None:
    assert parse_budget(text) == budget


def test_bad_budgets_and_spaces_are_clear_errors(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError, match="--budget must be a positive amount"):
        parse_budget("lots")
    space = _space(tmp_path)
    assert "--budget must be a positive amount" in cli_run("explore", str(space), "--budget", "-3usd", code=2)
    assert "needs a GPU target" in cli_run("explore", str(space), "--budget", "1gpu-h", code=2)
    (tmp_path / "b").mkdir()
    bad = _space(tmp_path / "b", SPACE.replace("max: 9", "max: 0"))
    assert "integer min and max" in cli_run("explore", str(bad), "--budget", "1usd", code=2)
    (tmp_path / "s2.yaml").write_text(SPACE.replace("trainable: trainable.py:train\n", ""))
    assert "'trainable' is missing" in cli_run("explore", str(tmp_path / "s2.yaml"), "--budget", "1usd", code=2)
    tiny = cli_run("explore", str(space), "--budget", "0.0001cpu-h", "--store", f"sqlite:///{tmp_path}/t.db", code=2)
    assert "less than one full-fidelity trial" in tiny and "Nothing was spent" in tiny


def test_preview_says_what_the_budget_buys(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    p = json.loads(cli_run("explore", str(_space(tmp_path)), "--budget", "0.1cpu-h", "--preview", "--json"))
    assert [r["resource"] for r in p["rungs"]] == [1, 3, 9]
    assert p["configurations"] > p["full_trials_without_asha"] > 0  # ASHA buys more configurations
    assert p["rungs"][1]["configurations"] == p["configurations"] // 3


def test_trial_job_and_outcome_cross_processes_in_one_versioned_format(tmp_path: Path) -> None:
    bound = HardwareBound("local", 20.0, None, True, "/p.pkl", float("inf"), float("inf"), "sqlite://")
    job = TrialJob("s.yaml", "st", "sqlite://", 3, {"lr": 0.1}, "/c.pkl", 1.7e9, threads=2, share=0.5, bound=bound)
    back = load_job(dumps(job))
    assert back == job and isinstance(back.bound, HardwareBound) and back.bound.margin == float("inf")
    assert bound.public_dict() == {
        "target": "local",
        "max_p99_ms": 20.0,
        "max_memory_mb": None,
        "measure": True,
        "rel_error": None,
        "margin": None,
    }  # no paths or URLs, strict JSON
    out = TrialOutcome("complete", value=0.9, steps=9, threads=2)
    assert load_outcome(dumps(out)) == out
    old = json.loads(dumps(out)) | {"protocol": TRIAL_PROTOCOL - 1}
    with pytest.raises(ProtocolError, match=f"protocol {TRIAL_PROTOCOL - 1} is not this chipfit's"):
        load_outcome(json.dumps(old))
    with pytest.raises(ProtocolError, match="expected a trial outcome"):
        load_outcome(dumps(job))  # a job is not an outcome
    with pytest.raises(ProtocolError, match="gpus: Unexpected keyword argument"):
        load_job(json.dumps(json.loads(dumps(job)) | {"gpus": 2}))
    with pytest.raises(ProtocolError, match="threads: Input should be a valid integer"):
        load_job(json.dumps(json.loads(dumps(job)) | {"threads": "many"}))  # types are checked on reading
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps(TrialJob("s.yaml", "st", "sqlite://", 3, {"lr": object()}, "/c.pkl", 1.7e9))  # never a silent str()


def test_the_trial_protocol_follows_the_schema() -> None:
    from chipfit.explore.job import SCHEMAS, schema_fingerprint

    assert SCHEMAS.get(TRIAL_PROTOCOL) == schema_fingerprint(), (
        "TrialJob/HardwareBound/TrialOutcome changed: bump explore.job.TRIAL_PROTOCOL and record the new "
        "schema_fingerprint() in SCHEMAS"
    )
    with pytest.raises(ValueError, match="needs its value"):
        TrialOutcome("complete")
    with pytest.raises(ValueError, match="status must be one of"):
        TrialOutcome("done", value=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("budget", "share_of_budget"),
    [(Budget(30, "s"), 1.0), (Budget(0.005, "cpu-h"), 1.0), (Budget(0.02, "usd"), 1.0)],
    ids=["wall", "cpu-h", "usd"],
)
def test_the_budget_is_spent_and_never_exceeded(tmp_path: Path, budget: Budget, share_of_budget: float) -> None:
    clock = ManualClock()
    with torch_threads():  # 2 trials at a time of 12 s each: the budget ends mid-trial and cuts them
        run = run_inline(tmp_path, budget, {}, Plan(steps=6, step_s=2.0, quality=0.5), clock=clock)
    meter = run.meter
    assert run.stopped_by == "budget"
    assert budget.amount * 0.9 <= meter.spent <= budget.amount * 1.01, meter.to_dict()
    trials = run.study.get_trials(deepcopy=False)
    cut = [t for t in trials if t.user_attrs.get("status") == "stopped"]
    assert cut and all("budget" in t.user_attrs["reason"] for t in cut)
    # every trial was charged its time on the clock, and the record in the study is what the meter says
    assert sum(t.user_attrs["charged_device_s"] for t in trials) == pytest.approx(meter.device_s)
    if budget.unit == "s":
        assert run.study.user_attrs["wall_s"] == pytest.approx(meter.wall_s) == pytest.approx(clock.t)
    resumed = CostMeter(budget, 3.6)
    Ledger(run.study, resumed, 0.5, clock)
    assert resumed.device_s == pytest.approx(meter.device_s)
    assert resumed.left == pytest.approx(meter.left, abs=budget.amount * 0.01)


def test_a_kill_9_loses_no_spending_and_the_resumed_run_stays_in_budget(tmp_path: Path) -> None:
    space = load_space(space_file(tmp_path))
    storage = optuna.storages.InMemoryStorage()
    clock = ManualClock()
    study = open_study(space, storage, seed=0, prune=True)
    ledger = Ledger(study, CostMeter(Budget(20, "s"), 3.6), share=0.5, clock=clock)
    ledger.begin()
    trial = study.ask()
    ledger.start(trial)
    clock.sleep(1.0)
    trial.report(0.5, 1)  # its last report, at 1 s
    while clock.t < 6.0:  # the driver's loop runs on; the trial trains on without reporting
        clock.sleep(0.05)
        ledger.tick()
    # kill -9 at 6 s: no finish, no close. While its record is current the trial looks alive to another run:
    assert open_study(space, storage, seed=0, prune=True, now=clock.time()).get_trials()[0].state.name == "RUNNING"
    clock.sleep(100.0)  # later the same command resumes on the same study
    study = open_study(space, storage, seed=0, prune=True, now=clock.time())
    meter = CostMeter(Budget(20, "s"), 3.6)
    ledger = Ledger(study, meter, share=0.5, clock=clock)
    (killed,) = study.get_trials(deepcopy=False)
    assert killed.state.name == "FAIL" and killed.user_attrs["reason"] == INTERRUPTED
    assert 6.0 <= killed.user_attrs["charged_s"] <= 6.0 + ledger.every_s  # not 1 s: its time since the report
    assert 3.0 <= meter.device_s <= 3.5 and 6.0 <= meter.wall_s <= 7.0  # wall time spent before the kill
    with torch_threads():
        run = run_inline(
            tmp_path, Budget(20, "s"), {}, Plan(steps=6, step_s=1.0, quality=0.5), clock=clock, storage=storage
        )
    assert run.meter.wall_s <= 20 * 1.01 and run.study.user_attrs["wall_s"] <= 20 * 1.01
    assert len(run.study.get_trials(deepcopy=False)) > 1  # the resumed run spent what was left


def test_the_budget_is_the_studys_total_and_new_study_starts_afresh(tmp_path: Path) -> None:
    storage = optuna.storages.InMemoryStorage()
    clock, plan = ManualClock(), Plan(steps=6, step_s=1.0, quality=0.5)
    with torch_threads():
        first = run_inline(tmp_path, Budget(10, "s"), {}, plan, clock=clock, storage=storage)
        n_first = len(first.study.get_trials(deepcopy=False))
        again = run_inline(tmp_path, Budget(10, "s"), {}, plan, clock=clock, storage=storage)
    # the same budget again: the study's total is spent, so the resumed run starts nothing and spends nothing
    assert again.study.study_name == first.study.study_name
    assert len(again.study.get_trials(deepcopy=False)) == n_first
    assert again.meter.wall_s == pytest.approx(first.meter.wall_s, abs=0.2) and again.meter.wall_s <= 10 * 1.01
    space = load_space(space_file(tmp_path))
    fresh = open_study(space, storage, seed=0, prune=False, new=True)
    assert fresh.study_name == first.study.study_name + "-2" and not fresh.trials
    assert len(optuna.load_study(study_name=first.study.study_name, storage=storage).trials) == n_first  # kept
    assert open_study(space, storage, seed=0, prune=False).study_name == fresh.study_name  # the newest resumes
    assert open_study(space, storage, seed=0, prune=False, new=True).study_name.endswith("-3")


def test_a_resume_is_announced_with_what_was_spent(tmp_path: Path) -> None:
    from chipfit.explore.study import resume_line

    meter = CostMeter(Budget(0.02, "cpu-h"), 3.6)
    meter.device_s = 0.015 * 3600
    line = resume_line("explore-ab12", tmp_path / "space.yaml", 511, meter, meter.spent)
    assert line == (
        f"resuming study explore-ab12 of {tmp_path / 'space.yaml'}: 511 trials, 0.015 cpu-h already spent of the "
        "budget 0.02 cpu-h; --new-study starts a fresh one"
    )
    meter.device_s = 0.1 * 3600  # spent by earlier runs with a larger budget: nothing left, and it says why
    assert "the budget is spent: raise --budget, the study's total" in resume_line("s", tmp_path, 2, meter, 0.1)
    line = resume_line("s", tmp_path, 1, CostMeter(Budget(2, "usd"), 1), 0.5)
    assert ": 1 trial, $0.5 already spent of the budget $2;" in line


def test_a_winner_whose_model_is_gone_is_skipped_with_a_note(tmp_path: Path) -> None:
    # a study from before models were kept in $CHIPFIT_HOME: its best trial's model was in a deleted --out
    from chipfit.explore.studies import winner
    from chipfit.explore.study import ExploreResult, _skip_gone

    space = load_space(space_file(tmp_path))
    study = open_study(space, optuna.storages.InMemoryStorage(), seed=0, prune=False)
    kept = tmp_path / "trial-1.onnx"
    kept.write_bytes(b"onnx")
    for value, onnx in ((0.9, tmp_path / "gone" / "trial-0.onnx"), (0.8, kept), (0.7, None)):
        trial = study.ask()
        if onnx is not None:
            trial.set_user_attr("onnx", str(onnx))
        study.tell(trial, value)
    result = ExploreResult(CostMeter(Budget(1, "usd"), 1.0), {}, winner(study), study.study_name, "budget", space)
    assert result.winner is not None and result.winner["trial"] == 0
    _skip_gone(study, result)
    assert result.winner is not None and result.winner["trial"] == 1 and result.winner["onnx"] == str(kept)
    assert result.notes == [
        f"trial 0's model {tmp_path / 'gone' / 'trial-0.onnx'} is gone (its folder was deleted); delivering "
        "trial 1, the best whose model is still there"
    ]
    kept.unlink()
    _skip_gone(study, result)
    assert result.winner is None and result.notes[-1].endswith("delivering no trial")


def test_asha_stops_the_laggards_at_their_rung(tmp_path: Path) -> None:
    good, bad = Plan(steps=6, step_s=1.0, quality=2.0), Plan(steps=6, step_s=1.0, quality=0.05)
    with torch_threads():
        run = run_inline(
            tmp_path,
            Budget(100, "s"),
            {0: good, 1: good, 2: good},
            bad,
            clock=ManualClock(),
            prune=True,
            max_trials=9,
        )
    trials = run.study.get_trials(deepcopy=False)
    states = {t.number: t.state.name for t in trials}
    assert run.stopped_by == "max_trials" and len(trials) == 9
    assert [states[n] for n in (0, 1, 2)] == ["COMPLETE"] * 3
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(pruned) >= 4 and all(max(t.intermediate_values) < 6 for t in pruned)  # stopped before the end


def _progress(db: Path) -> tuple[bool, int]:
    """(trial 0 has reported, trials complete), read straight from the study's SQLite file (cheap to poll)."""
    import sqlite3

    if not db.exists():
        return False, 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            reported = con.execute(
                "SELECT COUNT(*) FROM trial_intermediate_values v JOIN trials t ON t.trial_id = v.trial_id "
                "WHERE t.number = 0"
            ).fetchone()[0]
            done = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not created yet
            return False, 0
    return reported > 0, int(done)


def test_a_real_run_records_failures_and_after_kill_9_the_same_command_resumes(tmp_path: Path) -> None:
    space = _space(tmp_path)
    store = f"sqlite:///{tmp_path}/study.db"
    cmd = [sys.executable, "-m", "chipfit.cli", "explore", str(space), "--budget", "120s", "--concurrency", "2"]
    cmd += ["--max-trials", "8", "--store", store, "--out", str(tmp_path / "o"), "--json", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # trial 0 reports once then trains on; the other slot runs trials 1, 2, ... meanwhile
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.1)
            reported, done = _progress(tmp_path / "study.db")
            if reported and done >= 2:
                break
        time.sleep(1.5)  # trial 0 runs 1.5 s more since its last report, then the run is killed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name=None, storage=store)
    first = study.trials[0]
    assert first.intermediate_values and first.state.name == "RUNNING"
    # charged the time since its last report (1.5 s; the bounds leave 3x for a stalled machine), recorded ahead
    assert first.user_attrs["charged_s"] >= first.user_attrs["reported_s"] + 0.5
    wall_killed = float(study.user_attrs["wall_s"])
    assert wall_killed >= 1.0  # the wall time spent was recorded as it went (old code: only at a clean end)
    before = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert len(before) >= 2

    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    study = optuna.load_study(study_name=None, storage=store)
    after = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost
    assert len(study.trials) == 8 and out["stopped_by"] == "max_trials"
    assert out["unit"] == "s" and wall_killed <= out["spent"] <= 120  # the killed run's spending counted
    assert out["resumed"] is True and wall_killed <= out["spent_before"] <= out["spent"]
    assert study.trials[0].state.name == "FAIL" and "interrupted" in study.trials[0].user_attrs["reason"]
    reasons = {t.user_attrs.get("reason", "") for t in study.trials if t.state.name == "FAIL"}
    assert any("boom in the trainable" in r for r in reasons) and any("non-finite" in r for r in reasons), reasons
    assert out["winner"]["value"] > 0.5 and "quality" in out["winner"]["params"]
    assert Path(out["winner"]["checkpoint"]).exists()
    assert json.loads((tmp_path / "o" / "explore.json").read_text())["trials"] == out["trials"]


@pytest.mark.bench  # ~35 s of torch trials: run by `make bench`; the mechanics are covered above
def test_the_bundled_example_runs(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    space = Path(__file__).parents[1] / "examples" / "explore" / "space.yaml"
    out = json.loads(
        cli_run(
            "explore", str(space), "--budget", "0.008cpu-h", "--store", f"sqlite:///{tmp_path}/s.db", "--json", "-q"
        )
    )
    assert sum(out["trials"].values()) >= 2 and out["spent"] <= out["budget"] * 1.02
    assert out["winner"] is None or 0.5 < out["winner"]["value"] <= 1.0
