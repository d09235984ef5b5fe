"""TVM MetaSchedule tuning: a tuning run killed midway keeps what it tuned, and the next run (another model
sharing the workloads counts the same) reuses the database instead of tuning again. About 90 s of tuning on
2 cores, so it runs in `make bench`, not `make test`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chipfit.backends import backend_info

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(not backend_info("tvm").available, reason=f"tvm: {backend_info('tvm').reason}"),
]

TUNE = """
import sys
from pathlib import Path
from chipfit.backends.tvm import backend
from chipfit.testing.reference_models import mlp
path = mlp().save(Path(sys.argv[1]))
backend.compile(path, "cpu", {"batch": 2, "threads": 1, "tune_trials": int(sys.argv[2])})
"""


def _records(home: Path) -> int:
    files = list(home.glob("tvm-tuning/*/database_tuning_record.json"))
    return sum(len(f.read_text().splitlines()) for f in files)


def _tuned_workloads(home: Path) -> int:
    """Distinct workloads with at least one record (a record line starts with its workload's index)."""
    files = list(home.glob("tvm-tuning/*/database_tuning_record.json"))
    return len({(f, line.split(",")[0]) for f in files for line in f.read_text().splitlines() if line.strip()})


def test_killed_tuning_keeps_its_records_and_the_next_run_reuses_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, CHIPFIT_HOME=str(home))
    proc = subprocess.Popen(
        [sys.executable, "-c", TUNE, str(tmp_path), "64"],  # far more than it reaches before the kill
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # both of the MLP's tasks have records; the run is still tuning or building when it is killed
        while _tuned_workloads(home) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _records(home) > 0, "no tuning record was written"
        assert proc.poll() is None, "the tuning run ended before it was killed: nothing was killed midway"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 in the middle of tuning
        proc.wait()
    kept = _records(home)

    os.environ["CHIPFIT_HOME"] = str(home)
    from chipfit.backends.tvm import backend
    from chipfit.testing.reference_models import mlp

    ref = mlp()
    exe = backend.compile(ref.save(tmp_path), "cpu", {"batch": 2, "threads": 1, "tune_trials": 1})
    note = " ".join(exe.notes)
    assert "already in the tuning database" in note
    reused = int(note.split("(")[1].split()[0])
    assert reused >= 1, note  # the killed run's records count
    assert "0 new trials" in note, note  # every task was tuned by the killed run: nothing is tuned again
    assert _records(home) >= kept
    x = ref.inputs(2)
    np.testing.assert_allclose(exe.run({"x": x})[0], ref.expected(x), rtol=1e-3, atol=1e-4)
