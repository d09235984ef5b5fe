"""chipfit explore beyond the budgeted loop: deadline mode (HyperSched: no trial started that cannot finish,
the leader given the cores of the trials behind it — on a manual clock), the hardware bound inside the loop
(rejected before training by prediction, after the first report by measurement through fit; the winner
delivered as an artifact — one real run), the fine-tune and distillation recipes and trials as Ray tasks
(real training: under the bench marker), and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chipfit.explore.budget import Budget
from explore_inline import ManualClock, Plan, run_inline, torch_threads

FAKE = """
import math, time

def train(ctx):
    state = ctx.load_checkpoint() or {"step": 0}
    for step in range(state["step"] + 1, ctx.max_resource + 1):
        time.sleep(0.25)
        ctx.checkpoint({"step": step})
        ctx.report(1 - math.exp(-ctx.config["quality"] * step), step)
"""

FAKE_SPACE = """
trainable: trainable.py:train
metric: accuracy
resource: {min: 1, max: 9}
reduction_factor: 3
seconds_per_unit: 0.25
sampler: random
params:
  quality: {type: float, low: 0.01, high: 1.0}
"""


def _fake(tmp_path: Path) -> Path:
    (tmp_path / "trainable.py").write_text(FAKE)
    (tmp_path / "space.yaml").write_text(FAKE_SPACE)
    return tmp_path / "space.yaml"


def _strict(text: str) -> dict:  # type: ignore[type-arg]
    def bad(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=bad)  # type: ignore[no-any-return]


def test_deadline_mode_starts_only_trials_that_can_finish_and_gives_the_leader_the_cores(tmp_path: Path) -> None:
    # 3 cores, 3 trials of 1 core: trial 0 is short, 1 leads, 2 lags. When 0 ends (3 s), a new trial would
    # need 1 + 6 units × 2 s measured > the 11 s left: none starts, 2 is stopped, 1 gets its cores.
    plans = {0: Plan(6, 0.5, 0.2), 1: Plan(6, 2.0, 1.0), 2: Plan(6, 2.0, 0.3)}
    clock = ManualClock()
    with torch_threads():
        run = run_inline(
            tmp_path, Budget(14, "s"), plans, Plan(6, 2.0, 0.5), clock=clock, cores=3, concurrency=3, deadline_s=14
        )
    trials = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    assert run.stopped_by == "deadline" and sorted(trials) == [0, 1, 2]  # no trial that could not finish
    assert trials[0].state.name == trials[1].state.name == "COMPLETE"
    assert trials[2].user_attrs["status"] == "stopped"
    assert "deadline scheduler" in trials[2].user_attrs["reason"] and "behind trial 1" in trials[2].user_attrs["reason"]
    assert max(trials[2].intermediate_values) < 6  # stopped before its end
    leader = run.runner.handles[1]
    assert leader.threads_seen[0] == 1 and leader.threads_seen[-1] == 3  # the leader trained on with 3 cores
    assert trials[1].user_attrs["threads_used"] == 3
    assert run.meter.wall_s <= 14 and clock.t <= 14  # done by the deadline


def test_the_deadline_scheduler_stops_the_laggard_and_gives_the_leader_its_cores(tmp_path: Path) -> None:
    from chipfit.explore.schedule import DeadlineScheduler

    lead = {1: 0.5, 2: 0.7, 3: 0.8}
    lag = {1: 0.4, 2: 0.5, 3: 0.55}
    ahead = {1: 0.6, 2: 0.75}  # better than the leader was at step 2: not behind, kept
    sched = DeadlineScheduler(tmp_path, cores=6, concurrency=3)
    for n in (0, 1, 2):
        sched.assign(n, 2)
    stopped = sched.rebalance({0: lead, 1: lag, 2: ahead}, maximize=True)
    assert list(stopped) == [1] and "behind trial 0" in stopped[1]
    assert sched.threads(0) == 4 and sched.threads(2) == 2  # the laggard's 2 cores went to the leader
    assert sched.rebalance({0: lead, 1: lag, 2: ahead}, maximize=True) == {}  # told once
    minimize = DeadlineScheduler(tmp_path / "min", cores=4, concurrency=2)
    assert list(minimize.rebalance({0: {1: 0.4}, 1: {1: 0.5}}, maximize=False)) == [1]
    assert minimize.threads(0) == 4


BOUND_TRAINABLE = """
import torch
from torch import nn

def model(cfg):
    return nn.Sequential(nn.Linear(64, cfg["hidden"]), nn.ReLU(), nn.Linear(cfg["hidden"], 10))

def eval_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 64, generator=g)
    return {"x": x.numpy(), "labels": (x[:, 0] > 0).long().numpy()}

def train(ctx):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    y = (x[:, 0] > 0).long()
    net = model(ctx.config)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(1, ctx.max_resource + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        ctx.report((net(x).argmax(1) == y).float().mean().item(), step, model=net)
    return net
"""

BOUND_SPACE = """
trainable: trainable.py:train
metric: accuracy
resource: {min: 1, max: 4}
reduction_factor: 2
sampler: random
deploy:
  model: trainable.py:model
  inputs: {x: [1, 64]}
  data: trainable.py:eval_data
  spec: {time_budget: 2s}
params:
  hidden: {type: categorical, choices: [8, 16, 100000, 150000]}
"""


def test_the_hardware_bound_rejects_before_and_after_training_and_delivers_the_winner(
    tmp_path: Path,
    cli_run,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "trainable.py").write_text(BOUND_TRAINABLE)
    (tmp_path / "space.yaml").write_text(BOUND_SPACE)
    out = _strict(
        cli_run(
            "explore",
            str(tmp_path / "space.yaml"),
            "--budget",
            "300s",
            "--max-trials",
            "2",
            "--max-memory-mb",
            "16",
            "--max-p99-ms",
            "1000",  # the small models take microseconds: only a machine under heavy load could reach 50 ms
            "--out",
            str(tmp_path / "o"),
            "--store",
            f"sqlite:///{tmp_path}/s.db",
            "--json",
            "--no-asha",
        )
    )
    history = _strict((tmp_path / "o" / "explore.json").read_text())["history"]
    big = [h for h in history if h["params"].get("hidden", 0) >= 100000]
    small = [h for h in history if 0 < h["params"].get("hidden", 0) <= 16 and h["state"] == "complete"]
    # ≥ 28 MB of weights > 16 MB; a check the budget's end interrupted is "stopped", still with nothing trained
    judged = [h for h in big if h["state"] != "stopped"]
    assert judged and all(h["state"] == "rejected" for h in judged), big
    assert all("predicted before training" in h["reason"] and "memory" in h["reason"] for h in judged)
    assert all(not h["curve"] for h in big)  # nothing was trained
    why = [(h["state"], h.get("reason")) for h in history]
    assert small and all(h["hardware"]["source"] == "measured after the first report" for h in small), why
    w = out["winner"]
    assert w["hardware"]["ok"] and w["params"]["hidden"] <= 16
    manifest = _strict((tmp_path / "o" / "artifact" / "manifest.json").read_text())
    assert manifest and out["artifact"].endswith("artifact")
    import chipfit

    sess = chipfit.runtime.load(tmp_path / "o" / "artifact")
    assert sess is not None
    html = (tmp_path / "o" / "explore.html").read_text()
    assert html.count("<svg") >= 3 and "Rung decisions" in html and "max p99" in html


RESUME_SPACE = """
trainable: trainable.py:train
metric: accuracy
resource: {min: 1, max: 2}
sampler: random
deploy:
  model: trainable.py:model
  inputs: {x: [1, 64]}
  data: trainable.py:eval_data
  spec: {time_budget: 2s}
params:
  hidden: {type: categorical, choices: [8, 16]}
"""


def test_a_resumed_study_says_so_and_delivers_after_its_first_out_folder_is_deleted(
    tmp_path: Path, chipfit_home: Path
) -> None:
    import shutil

    from typer.testing import CliRunner

    from chipfit.cli import app

    (tmp_path / "trainable.py").write_text(BOUND_TRAINABLE)
    (tmp_path / "space.yaml").write_text(RESUME_SPACE)
    base = ["explore", str(tmp_path / "space.yaml"), "--budget", "300s", "--store", f"sqlite:///{tmp_path}/s.db"]

    def run(*args: str) -> tuple[dict, str]:  # type: ignore[type-arg]
        result = CliRunner().invoke(app, [*base, *args, "--json"])
        assert result.exit_code == 0, (result.output, result.exception)
        return _strict(result.stdout), result.stderr

    first, err = run("--max-trials", "1", "--out", str(tmp_path / "A"))
    assert first["resumed"] is False and first["spent_before"] == 0 and "resuming" not in err
    assert (tmp_path / "A" / "artifact" / "manifest.json").exists()
    assert Path(first["winner"]["onnx"]).is_relative_to(chipfit_home / "explore")  # the study's, not in --out
    shutil.rmtree(tmp_path / "A")  # the study's models are not there: the resumed run does not need them
    second, err = run("--max-trials", "2", "--out", str(tmp_path / "B"))
    assert second["study"] == first["study"] and second["resumed"] is True
    assert second["spent_before"] == pytest.approx(first["spent"]) and second["spent"] <= 300
    assert f"resuming study {first['study']} of {tmp_path / 'space.yaml'}: 1 trial, " in err
    assert "already spent of the budget 300 s; --new-study starts a fresh one" in err
    assert (tmp_path / "B" / "artifact" / "manifest.json").exists() and second["artifact"].endswith("artifact")
    assert not second["notes"] and Path(second["winner"]["onnx"]).exists()
    fresh, err = run("--max-trials", "1", "--new-study", "--no-deliver")
    assert fresh["study"] == first["study"] + "-2" and fresh["resumed"] is False and "resuming" not in err
    assert sum(fresh["trials"].values()) == 1


RECIPE_DATA = """
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

def data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return x[:1400], y[:1400], x[1400:], y[1400:]

def student(cfg):
    return nn.Sequential(nn.Linear(64, cfg["hidden"]), nn.ReLU(), nn.Linear(cfg["hidden"], 10))
"""


def _recipe_files(tmp_path: Path) -> None:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    (tmp_path / "task.py").write_text(RECIPE_DATA)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    xt, yt = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(xt), yt).backward()
        opt.step()
    torch.jit.save(torch.jit.script(teacher), tmp_path / "teacher.pt")  # a torch.save pickle needs --trust-pickle
    torch.jit.save(torch.jit.script(teacher[:2]), tmp_path / "backbone.pt")  # its first layer and activation
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pkl")
    (tmp_path / "teacher_model.py").write_text(
        "from torch import nn\n\ndef build(cfg):\n"
        "    return nn.Sequential(nn.Linear(64, cfg['width']), nn.ReLU(), nn.Linear(cfg['width'], 10))\n"
    )


@pytest.mark.bench  # real training of digits models, ~12 s each: run by `make bench`
@pytest.mark.parametrize(
    "recipe",
    [
        "trainable: chipfit:finetune\nfinetune: {data: task.py:data, backbone: backbone.pt}\n"
        "params:\n  lr: {type: float, low: 0.003, high: 0.03, log: true}\n"
        "  head_hidden: {type: categorical, choices: [0, 32]}\n  unfreeze: {type: int, low: 0, high: 1}\n",
        "trainable: chipfit:distill\ndistill: {data: task.py:data, teacher: teacher.pt, student: task.py:student}\n"
        "params:\n  hidden: {type: int, low: 8, high: 32}\n  temperature: {type: float, low: 1, high: 6}\n"
        "  alpha: {type: float, low: 0.2, high: 0.9}\n  lr: {type: float, low: 0.003, high: 0.03}\n",
        "trainable: chipfit:distill\ndistill:\n  data: task.py:data\n  student: task.py:student\n"
        "  teacher: {checkpoint: teacher.pkl, model: teacher_model.py:build, config: {width: 128}}\n"
        "params:\n  hidden: {type: int, low: 8, high: 32}\n  lr: {type: float, low: 0.003, high: 0.03}\n",
    ],
    ids=["finetune", "distill-from-file", "distill-from-checkpoint"],
)
def test_the_recipes_train_and_report(tmp_path: Path, cli_run, recipe: str) -> None:  # type: ignore[no-untyped-def]
    _recipe_files(tmp_path)
    (tmp_path / "space.yaml").write_text("metric: accuracy\nresource: {min: 1, max: 3}\n" + recipe)
    out = _strict(
        cli_run(
            "explore",
            str(tmp_path / "space.yaml"),
            "--budget",
            "12s",
            "--store",
            f"sqlite:///{tmp_path}/s.db",
            "--json",
            "--no-deliver",
        )
    )
    assert out["trials"].get("complete", 0) >= 1, out
    assert out["winner"]["value"] > 0.8  # digits from a trained teacher / backbone


def test_recipe_and_bound_errors_are_clear(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    space = _fake(tmp_path)
    store = ["--store", f"sqlite:///{tmp_path}/s.db"]
    assert "need a 'deploy:' section" in cli_run(
        "explore", str(space), "--budget", "5s", "--max-p99-ms", "1", *store, code=2
    )
    assert "--deadline must be a wall time" in cli_run("explore", str(space), "--deadline", "3usd", *store, code=2)
    assert "Give --budget" in cli_run("explore", str(space), *store, code=2)
    (tmp_path / "r.yaml").write_text(FAKE_SPACE.replace("trainable.py:train", "chipfit:nope"))
    assert "not a built-in recipe" in cli_run("explore", str(tmp_path / "r.yaml"), "--budget", "5s", code=2)
    (tmp_path / "f.yaml").write_text(FAKE_SPACE.replace("trainable.py:train", "chipfit:finetune"))
    assert "needs a 'finetune:' section" in cli_run("explore", str(tmp_path / "f.yaml"), "--budget", "5s", code=2)
    (tmp_path / "d.yaml").write_text(FAKE_SPACE + "deploy: {model: trainable.py:train, inputs: {x: [0]}}\n")
    assert "'deploy.inputs' must map" in cli_run("explore", str(tmp_path / "d.yaml"), "--budget", "5s", code=2)
    from chipfit.errors import SpecError
    from chipfit.explore.recipes import load_module

    with pytest.raises(SpecError, match="does not exist"):
        load_module(tmp_path / "missing.pt")


@pytest.mark.bench  # a local Ray costs ~15 s to start; the accounting is the same loop as above
def test_trials_run_as_ray_tasks_with_the_same_accounting(tmp_path: Path, cli_run, local_ray) -> None:  # type: ignore[no-untyped-def]
    space = _fake(tmp_path)
    out = _strict(
        cli_run(
            "explore",
            str(space),
            "--budget",
            "20s",
            "--ray",
            "local",
            "--concurrency",
            "2",
            "--store",
            f"sqlite:///{tmp_path}/s.db",
            "--json",
        )
    )
    assert out["trials"].get("complete", 0) >= 1, out
    assert out["spent"] <= 20 * 1.02
    assert sum(out["trials"].values()) >= 2


def test_the_winner_export_is_checked_against_the_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import optuna

    from chipfit.errors import ModelError
    from chipfit.explore.constraint import export_model
    from chipfit.explore.job import TrialJob
    from chipfit.explore.space import load_space
    from chipfit.explore.trial import TrialContext

    class Branchy(torch.nn.Module):  # a trace records one branch of this
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    (tmp_path / "trainable.py").write_text("def train(ctx):\n    pass\n\ndef model(cfg):\n    pass\n")
    (tmp_path / "space.yaml").write_text(FAKE_SPACE + "deploy: {model: trainable.py:model, inputs: {x: [1, 4]}}\n")
    trial = optuna.create_study().ask()
    job = TrialJob(str(tmp_path / "space.yaml"), "s", "none", trial.number, {}, str(tmp_path / "t.pkl"), 0.0)
    with torch_threads():
        ctx = TrialContext(trial, job, load_space(tmp_path / "space.yaml"))
        with pytest.raises(ModelError, match=r"export of Branchy .*differs by up to .*Python boolean"):
            export_model(ctx, Branchy())
        good = export_model(ctx, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
    assert good is not None and good.endswith("t.onnx") and Path(good).stat().st_size > 0
