"""chipfit explore: budgets parsed and never exceeded, ASHA stopping laggards, failing trainables recorded
while the study goes on, kill -9 then resume with nothing completed lost, --preview, the example."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chipfit.errors import SpecError
from chipfit.explore import Budget, parse_budget

TRAINABLE = """
import math, time

def train(ctx):
    cfg = ctx.config
    if cfg["kind"] == "crash":
        raise RuntimeError("boom in the trainable")
    extra = ctx.suggest_float("noise", 0.0, 0.01)          # define-by-run
    state = ctx.load_checkpoint() or {"step": 0}
    for step in range(state["step"] + 1, ctx.max_resource + 1):
        time.sleep(0.02)
        if cfg["kind"] == "nan":
            ctx.report(float("nan"), step)
        acc = 1 - math.exp(-cfg["quality"] * step) + extra
        ctx.checkpoint({"step": step})
        ctx.report(acc, step)
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
  kind: {type: categorical, choices: [ok, ok, crash, nan]}
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


def test_a_budgeted_run_prunes_records_failures_and_stays_in_budget(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    space = _space(tmp_path)
    store = f"sqlite:///{tmp_path}/study.db"
    out = json.loads(
        cli_run(
            "explore", str(space), "--budget", "0.006cpu-h", "--store", store, "--out", str(tmp_path / "o"), "--json"
        )
    )
    assert out["unit"] == "cpu-h" and out["budget"] == 0.006 and out["spent_usd"] > 0
    assert out["spent"] <= out["budget"] * 1.02  # never (materially) past the budget
    states = out["trials"]
    assert states.get("complete", 0) >= 1 and states.get("fail", 0) >= 1, states
    assert out["winner"]["value"] > 0.5 and "quality" in out["winner"]["params"]
    assert Path(out["winner"]["checkpoint"]).exists()
    import optuna

    study = optuna.load_study(study_name=out["study"], storage=store)
    reasons = {t.user_attrs.get("reason", "") for t in study.trials if t.state.name == "FAIL"}
    assert any("boom in the trainable" in r for r in reasons) and any("non-finite" in r for r in reasons), reasons
    assert json.loads((tmp_path / "o" / "explore.json").read_text())["trials"] == states


def test_kill_9_then_the_same_command_resumes(tmp_path: Path) -> None:
    space = _space(tmp_path)
    store = f"sqlite:///{tmp_path}/study.db"
    cmd = [
        sys.executable,
        "-m",
        "chipfit.cli",
        "explore",
        str(space),
        "--budget",
        "0.004cpu-h",
        "--store",
        store,
        "--out",
        str(tmp_path / "o"),
        "--json",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import optuna

    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and done < 2:
        time.sleep(1)
        try:
            study = optuna.load_study(study_name=None, storage=store)
            done = sum(t.state.name == "COMPLETE" for t in study.trials)
        except Exception:
            done = 0
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name=None, storage=store)
    before = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    charged = sum(float(t.user_attrs.get("charged_s", 0)) for t in study.trials)
    assert len(before) >= 2 and charged > 0
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    study = optuna.load_study(study_name=None, storage=store)
    after = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost
    assert out["spent"] * 3600 >= charged * 0.99  # what the killed run spent is counted
    assert out["spent"] <= out["budget"] * 1.02
    assert any("interrupted" in t.user_attrs.get("reason", "") for t in study.trials) or len(after) > len(before)


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
