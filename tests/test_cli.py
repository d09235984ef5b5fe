"""The command line as a user runs it: a real `chipfit` process, its exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_FLAGS

CHIPFIT = [sys.executable, "-m", "chipfit.cli"]


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHIPFIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def _assert_clean_error(p: subprocess.CompletedProcess[str], pattern: str) -> None:
    import re

    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert re.search(pattern, " ".join(p.stderr.split())), p.stderr


def test_fit_json_and_table(mlp: Path, mlp_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    loud = [f for f in FAST_FLAGS if f != "-q"]
    p = run("fit", mlp, "--data", mlp_npz, "--max-p99-ms", "1000", "--out", out, "--json", *loud)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["feasible"] and result["winner"]["status"] == "ok"
    assert {"winner", "pareto", "near_misses", "candidates"} <= set(result)
    assert (out / "manifest.json").exists()
    # stderr is a pipe here, not a terminal: one line per finished candidate, not a progress bar's last state
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("[") and "(measured" in ln]
    assert len(lines) == sum(c["source"] == "measured" for c in result["candidates"]) >= 2, p.stderr
    assert "━" not in p.stderr
    table = run("fit", mlp, "--data", mlp_npz, *FAST_FLAGS)  # with -q
    assert table.returncode == 0 and "winner (latency)" in table.stdout and "p50 ms" in table.stdout
    assert "(stored" not in table.stderr and "measuring" not in table.stderr  # --quiet: no progress at all


def test_infeasible_exits_1_with_near_misses(mlp: Path, mlp_npz: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("max_p50_ms: 0.000001\n")
    p = run("fit", mlp, "--data", mlp_npz, "--spec", spec, "--out", tmp_path / "o", *FAST_FLAGS)
    assert p.returncode == 1, p.stderr
    assert "no candidate meets every constraint" in p.stdout and "p50_ms" in p.stdout and "> 1e-06ms" in p.stdout
    assert (tmp_path / "o" / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-p99-ms", "-3"], r"--max-p99-ms must be a positive number of milliseconds; got -3"),
        (["--max-accuracy-drop", "2"], r"--max-accuracy-drop must be a number from 0 to 1"),
        (["--objective", "fastest"], r"--objective must be one of latency, throughput"),
        (["--batch-sizes", "1,x"], r"--batch-sizes must be a comma-separated list of positive integers"),
        (["--backends", "nosuch"], r"unknown backend 'nosuch'"),
    ],
)
def test_bad_flags(mlp: Path, mlp_npz: Path, args: list[str], pattern: str) -> None:
    _assert_clean_error(run("fit", mlp, "--data", mlp_npz, *args, "-q"), pattern)


def test_bad_files(mlp: Path, mlp_npz: Path, tmp_path: Path) -> None:
    _assert_clean_error(run("fit", tmp_path / "missing.onnx", "--data", mlp_npz), r"missing.onnx' does not exist")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(300))
    _assert_clean_error(run("fit", corrupt, "--data", mlp_npz), r"corrupt.onnx")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((4, 4), np.float32), labels=np.arange(3))
    _assert_clean_error(run("fit", mlp, "--data", bad), r"'labels' .* has 3 entries but the inputs hold 4")
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((4, 4), np.nan, np.float32))
    _assert_clean_error(run("fit", mlp, "--data", nan), r"NaN or infinite values in 4 sample")
    spec = tmp_path / "s.yaml"
    spec.write_text("max_p99: 3\n")
    _assert_clean_error(run("fit", mlp, "--data", mlp_npz, "--spec", spec), r"Unknown spec key 'max_p99'")


def test_unwritable_out_fails_before_any_work(mlp: Path, mlp_npz: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _assert_clean_error(
        run("fit", mlp, "--data", mlp_npz, "--out", blocker / "sub"), r"--out .*a-file/sub' is not writable"
    )
    _assert_clean_error(run("fit", mlp, "--data", mlp_npz, "--out", blocker), r"--out .*a-file' is a file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    _assert_clean_error(run("fit", mlp, "--data", mlp_npz, "--out", foreign), r"not a chipfit artifact; refusing")
    assert (foreign / "keep.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_help_explains() -> None:
    p = run("fit", "--help")
    assert p.returncode == 0 and "--max-p99-ms" in p.stdout and "Exit code" in p.stdout


def _rows(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("select count(*) from measurements").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_kill_9_then_resume_loses_and_duplicates_nothing(mlp: Path, mlp_npz: Path, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    args = [
        "fit",
        mlp,
        "--data",
        mlp_npz,
        "--store",
        f"sqlite:///{db}",
        "--json",
        "--backends",
        "onnxruntime",
        "--passes",
        "none",  # the fp32 graph levels: 4 variants x 2 execution modes, plus the reference
        "--measure-time",
        "0.15",
        "--batch-sizes",
        "1",
        "--threads",
        "1",
        "--execution-modes",
        "sequential,parallel",
        "-q",
    ]
    proc = subprocess.Popen(
        [*CHIPFIT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    # killed after the first stored result: the rest (several worker processes) cannot finish in one poll
    while _rows(db) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; give it more candidates"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _rows(db)
    assert done_before >= 1
    p = run(*args)
    assert p.returncode == 0, p.stderr
    sources = [c["source"] for c in json.loads(p.stdout)["candidates"]]
    assert sources.count("stored") == done_before
    skipped = sources.count("skipped")  # e.g. fp16 on a CPU without fast fp16; never stored
    assert sources.count("measured") == len(sources) - done_before - skipped
    assert _rows(db) == len(sources) - skipped  # every measured candidate exactly once
    assert sources.count("measured") >= 3  # the kill came early: most of the run was still to do
