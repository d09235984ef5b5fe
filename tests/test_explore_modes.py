"""chipfit explore beyond the budgeted loop: deadline mode (HyperSched: no trial started that cannot finish,
the leader given the cores of the trials behind it), the hardware bound inside the loop (rejected before
training by prediction, after the first report by measurement through fit; the winner delivered as an
artifact), the fine-tune and distillation recipes, trials as Ray tasks, and the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the scheduler's core shift needs two cores")
def test_deadline_mode_starts_only_trials_that_can_finish_and_shifts_cores(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    space = _fake(tmp_path)
    out = _strict(
        cli_run(
            "explore",
            str(space),
            "--deadline",
            "14s",
            "--concurrency",
            "2",
            "--no-asha",
            "--out",
            str(tmp_path / "o"),
            "--store",
            f"sqlite:///{tmp_path}/s.db",
            "--json",
        )
    )
    assert out["stopped_by"] == "deadline" and out["unit"] == "s"
    assert out["spent"] <= 14 * 1.02
    history = _strict((tmp_path / "o" / "explore.json").read_text())["history"]
    assert out["trials"].get("complete", 0) >= 2
    # every trial started before the deadline could train to the end; only the scheduler stopped any
    for h in history:
        if h["state"] != "complete":
            assert "deadline scheduler" in (h["reason"] or ""), h


def test_the_deadline_scheduler_stops_the_laggard_and_gives_the_leader_its_cores(tmp_path: Path) -> None:
    import optuna

    from chipfit.explore.schedule import DeadlineScheduler

    study = optuna.create_study(direction="maximize")
    lead, lag = study.ask(), study.ask()
    for step, (a, b) in enumerate([(0.5, 0.4), (0.7, 0.5), (0.8, 0.55)], start=1):
        lead.report(a, step)
        lag.report(b, step)
    sched = DeadlineScheduler(tmp_path, cores=4, concurrency=2)
    sched.assign(lead.number, 2)
    sched.assign(lag.number, 2)
    running = [{"trial": lead}, {"trial": lag}]
    stopped = sched.rebalance(study, running)
    assert [r["trial"].number for r in stopped] == [lag.number]
    assert "behind trial 0" in stopped[0]["reason"]
    assert sched.threads_file(lead.number).read_text() == "4"  # the leader now holds every core


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
  spec: {time_budget: 10s}
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
            "25s",
            "--max-memory-mb",
            "16",
            "--max-p99-ms",
            "50",
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
    assert small and all(h["hardware"]["source"] == "measured after the first report" for h in small)
    w = out["winner"]
    assert w["hardware"]["ok"] and w["params"]["hidden"] <= 16
    manifest = _strict((tmp_path / "o" / "artifact" / "manifest.json").read_text())
    assert manifest and out["artifact"].endswith("artifact")
    import chipfit

    sess = chipfit.runtime.load(tmp_path / "o" / "artifact")
    assert sess is not None
    html = (tmp_path / "o" / "explore.html").read_text()
    assert html.count("<svg") >= 3 and "Rung decisions" in html and "max p99" in html


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
    torch.save(teacher, tmp_path / "teacher.pt")
    torch.save(teacher[:2], tmp_path / "backbone.pt")  # a feature extractor: its first layer and activation
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pkl")
    (tmp_path / "teacher_model.py").write_text(
        "from torch import nn\n\ndef build(cfg):\n"
        "    return nn.Sequential(nn.Linear(64, cfg['width']), nn.ReLU(), nn.Linear(cfg['width'], 10))\n"
    )


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
