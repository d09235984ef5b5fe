"""``chipfit remat`` end to end on a small MLP (8 blocks of Linear, LayerNorm, GELU): measured peaks and times from the isolated worker, the plan's
measured peak within the budget, the max-batch search, the errors of bad input (exit 2, no traceback), and
explore's ``--train-memory-mb`` on the distillation recipe."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("highspy")

MLP = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        *[torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.LayerNorm(128), torch.nn.GELU()) for _ in range(8)]
    )

def nothing():
    return "a string"

def square(out):
    return (out ** 2).mean()
"""
INPUT = "x:float32[B,128]"


@pytest.fixture(autouse=True)
def one_thread_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measurement workers run torch on one thread: a 2-thread step on a machine shared with other jobs
    spends most of its time waiting at OpenMP barriers (steps 10-100x slower; the peaks are the same)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remat") / "mlp.py"
    path.write_text(MLP)
    return path


@pytest.fixture(scope="module")
def between(mlp: Path) -> tuple[float, Any]:
    """A budget halfway between the least schedule's predicted peak and the plain step's at batch 2048 (so a
    plan must recompute), and the plan for a budget above the plain peak."""
    from chipfit.remat import plan
    from chipfit.remat.step import StepSpec, parse_inputs

    spec = StepSpec(f"{mlp}:build", parse_inputs([INPUT]))
    p = plan(spec.build_module(), spec.example_inputs(2048), 1e6)
    return round((p.min_budget_mb + p.baseline_peak_mb) / 2, 1), p


def _cli(*args: str, code: int = 0) -> Any:
    """``chipfit remat ARGS`` in this process (the measurements still run in the worker process)."""
    from typer.testing import CliRunner

    from chipfit.cli import app

    result = CliRunner().invoke(app, ["remat", *args, "--time-limit", "5"])
    assert result.exit_code == code, (result.exit_code, result.stdout[-2000:], result.stderr[-3000:], result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_inputs_are_parsed_with_the_batch_dimension() -> None:
    from chipfit.errors import SpecError
    from chipfit.remat.step import parse_input, parse_inputs

    x = parse_input("x:float32[B,256]")
    assert (x.name, x.dtype, x.shape, x.dims(8)) == ("x", "float32", ("B", 256), (8, 256))
    ids = parse_input("ids:int64[4,B]<1000")
    t = ids.tensor(3)
    assert t.shape == (4, 3) and int(t.max()) < 1000 and str(ids) == "ids:int64[4,B]<1000"
    for bad, why in [
        ("x:float32[256]", "batch dimension B exactly once"),
        ("x:float32[B,B]", "exactly once"),
        ("x:complex64[B,2]", "is not one of"),
        ("x:float32[B,0]", "positive integer or B"),
        ("x float32[B,2]", "is not name:dtype[dims]"),
        ("x:float32[B,2]<5", "integer inputs only"),
    ]:
        with pytest.raises(SpecError, match=re.escape(why)):
            parse_input(bad)
    with pytest.raises(SpecError, match="more than once"):
        parse_inputs(["x:float32[B,2]", "x:float32[B,3]"])


def test_batch_json_measured_peak_within_the_budget(mlp: Path, between: tuple[float, Any]) -> None:
    budget, unplanned = between
    assert unplanned.solver == "none" and not unplanned.recomputed  # a budget above the plain peak: no recompute
    proc = _cli(f"{mlp}:build", "--inputs", INPUT, "--budget-mb", str(budget), "--batch", "2048", "--json")
    d = json.loads(proc.stdout)  # stdout holds the JSON only (the solver's banner goes to stderr)
    for key in (
        "baseline_peak_mb", "peak_mb", "baseline_step_ms", "step_ms", "baseline_max_batch", "max_batch", "solver",
        "optimality_gap", "predicted_peak_mb", "overhead", "recomputed", "measured_peak_mb", "fallback",
    ):  # fmt: skip
        assert key in d, key
    assert d["batch"] == 2048 and d["max_batch"] is None and d["baseline_max_batch"] is None
    assert d["solver"] in ("milp", "lp-rounding", "segmented") and d["recomputed"]
    assert d["baseline_peak_mb"] > budget  # measured: the plain step does not fit
    # the documented margin: freed blocks a probe leaves resident (drift_mb) may be reused by the next one
    assert d["fits"] and d["peak_mb"] <= budget + d["drift_mb"], d
    assert d["baseline_step_ms"] > 0 and d["step_ms"] > 0
    assert abs(d["baseline_peak_mb"] - unplanned.baseline_peak_mb) / d["baseline_peak_mb"] < 0.5  # same step
    assert "tracing the step" in proc.stderr and "timing the step" in proc.stderr  # progress: no silent phase


def test_max_batch_table(mlp: Path, between: tuple[float, Any]) -> None:
    budget, _ = between
    proc = _cli(
        f"{mlp}:build", "--inputs", INPUT, "--budget-mb", str(budget), "--max-batch", "--loss", f"{mlp}:square",
        "--resolution", "0.2",
    )  # fmt: skip
    out = proc.stdout
    assert "largest batch that fits" in out and "with plan" in out and "recomputed:" in out
    lines = [line for line in out.splitlines() if "largest batch that fits" in line]
    plain, planned = (int(v) for v in lines[0].replace("│", " ").split()[-2:])
    assert planned > plain >= 1  # recomputing activations fits a larger batch in the same budget
    assert "as is: batch" in proc.stderr and "with plan: batch" in proc.stderr  # the search's progress


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inputs", "x:float32[256]"], "batch dimension B exactly once"),
        (["--inputs", "x:float64[B,128]", "--inputs", "x:float32[B,1]"], "more than once"),
        (["--budget-mb", "-3"], "positive number of MB"),
        (["--optimizer", "lion"], "--optimizer must be one of"),
        (["--batch", "8", "--max-batch"], "not both"),
        (["--loss", "missing.py:fn"], "is not a Python file"),
        (["--solver", "gurobi"], "--solver must be"),
        (["--resolution", "2"], "--resolution must be a fraction"),
    ],
)
def test_bad_flags_exit_2(mlp: Path, args: list[str], message: str) -> None:
    base = {"--inputs": INPUT, "--budget-mb": "64", "--batch": "16"}
    flags = [a for k, v in base.items() if k not in args for a in (k, v)]
    if "--max-batch" in args:
        flags = [a for a in flags if a not in ("--batch", "16")]
    proc = _cli(f"{mlp}:build", *flags, *args, code=2)
    assert message in proc.stderr, proc.stderr


def tiny() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh())


def tiny_batch(batch: int) -> Any:
    import torch

    return torch.randn(batch, 64)


def test_max_batch_api_measures_in_the_worker() -> None:
    from chipfit.errors import SpecError
    from chipfit.remat import max_batch

    r = max_batch(tiny, tiny_batch, 6.0, schedule="none", resolution=1 / 2)
    assert r.max_batch >= 1 and r.peak_mb is not None and r.peak_mb <= 6.0
    assert any(not f.fits for f in r.tried)  # the search went past the largest batch and came back
    with pytest.raises(SpecError, match="top level of a Python file"):
        max_batch(lambda: tiny(), tiny_batch, 12.0)


def test_bad_models_exit_2(mlp: Path, tmp_path: Path) -> None:
    common = ["--inputs", INPUT, "--budget-mb", "64", "--batch", "16"]
    assert "is not a Python file" in _cli(f"{tmp_path}/nope.py:build", *common, code=2).stderr
    assert "has no function 'missing'" in _cli(f"{mlp}:missing", *common, code=2).stderr
    assert "not a torch.nn.Module" in _cli(f"{mlp}:nothing", *common, code=2).stderr


def test_budget_below_the_minimum_names_it(mlp: Path) -> None:
    proc = _cli(f"{mlp}:build", "--inputs", INPUT, "--budget-mb", "0.5", "--batch", "2048", code=2)
    assert "no checkpoint schedule fits" in proc.stderr and "at least" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------- explore --train-memory-mb
TASK = """
import torch
from torch import nn

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = (x[:, 0] > 0).long()
    return x[:768], y[:768], x[768:], y[768:]

def student(cfg):
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32 if _ == 0 else 256, 256), nn.Tanh())],
                         nn.Linear(256, 2))
"""


def _distill(tmp_path: Path) -> tuple[Path, Any]:
    import torch

    (tmp_path / "task.py").write_text(TASK)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(32, 2)), tmp_path / "teacher.pt")
    (tmp_path / "space.yaml").write_text(
        "trainable: chipfit:distill\ndistill: {data: task.py:data, teacher: teacher.pt, student: task.py:student}\n"
        "metric: accuracy\nresource: {min: 1, max: 1}\nparams:\n  batch_size: {type: categorical, choices: [512]}\n"
    )
    from chipfit.explore.space import load_space
    from chipfit.remat import plan

    space = load_space(tmp_path / "space.yaml")
    student = space.load_function("task.py:student")({})
    x = space.load_function("task.py:data")()[0][:512]
    return tmp_path / "space.yaml", plan(student, (x,), 1e6, optimizer="adam")


def _trial(space: Path, budget: float | None) -> Any:
    from chipfit.explore.job import TrialJob
    from chipfit.explore.space import load_space
    from chipfit.explore.studies import open_storage, open_study
    from chipfit.explore.trial import run_trial

    url = f"sqlite:///{space.parent}/s-{budget}.db"
    sp = load_space(space)
    study = open_study(sp, open_storage(url), 0, prune=False)
    trial = study.ask()
    job = TrialJob(str(space), study.study_name, url, trial.number, sp.sample(trial),
                   str(space.parent / f"c-{budget}.pkl"), time.time() + 120, train_memory_mb=budget)  # fmt: skip
    return run_trial(job, trial), trial


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit saves the teacher (a model file, no pickle)
def test_explore_trains_a_recipe_under_a_remat_plan(tmp_path: Path) -> None:
    space, p = _distill(tmp_path)
    budget = round((p.min_budget_mb + p.baseline_peak_mb) / 2, 2)
    outcome, trial = _trial(space, budget)
    assert outcome.status == "complete", outcome
    assert outcome.remat_overhead is not None and outcome.remat_overhead > 0  # charged with its units
    assert trial.user_attrs["remat"]["peak_mb"] <= budget
    assert outcome.value > 0.6  # it trained (a linear task)
    plain, _ = _trial(space, None)
    assert plain.status == "complete" and plain.remat_overhead is None
    too_small, _ = _trial(space, round(p.min_budget_mb / 4, 3))
    assert too_small.status == "rejected" and "needs at least" in too_small.reason, too_small


@pytest.mark.bench  # ~12 s: a benchmark script's check, run by `make bench`
def test_the_gpu_benchmark_script_runs_on_the_cpu(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "remat_gpu.py"), str(tmp_path / "g.json"), "--device", "cpu",
         "--dry-run", "--time-limit", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "g.json").read_text())
    assert [r["schedule"] for r in doc["rows"]] == ["none", "checkpoint_sequential", "chipfit plan"]
    assert doc["rows"][0]["max_batch"] >= 1 and doc["rows"][2]["max_batch"] >= doc["rows"][0]["max_batch"]
    assert "| chipfit plan |" in proc.stdout


def test_explore_train_memory_must_be_positive(tmp_path: Path, cli_run: Any) -> None:
    (tmp_path / "task.py").write_text(TASK)
    (tmp_path / "space.yaml").write_text(
        "trainable: task.py:data\nmetric: accuracy\nresource: {min: 1, max: 1}\n"
        "params:\n  lr: {type: float, low: 0.001, high: 0.1}\n"
    )
    store = f"sqlite:///{tmp_path}/s.db"
    err = cli_run("explore", str(tmp_path / "space.yaml"), "--budget", "5s", "--train-memory-mb", "-1", "--store", store,
                  code=2)  # fmt: skip
    assert "--train-memory-mb must be a positive number of MB" in err
