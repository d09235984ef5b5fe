"""Issue 14, defect 8: what a kill -9 or a concurrent run leaves behind.

Staging folders of a dead writer are cleaned by the next write (a live writer's are kept); a measurement worker
and an explore trial die with the process that started them; two runs on the same cores take turns measuring
(on disjoint cores they do not), and one that measured anyway after waiting past the bound says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

import chipfit
from chipfit.data import Dataset
from chipfit.fsutil import atomic_dir
from chipfit.measure.job import QualityJob, WorkerJob
from chipfit.measure.lock import CONCURRENT_LOAD, cpu_set, measurement_lock
from chipfit.model import onnx_file_hash
from chipfit.search.driver import MeasureSettings
from chipfit.search.space import SpaceOptions
from conftest import FAST_TIMING, make_mlp

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 and /proc: Linux")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _killed_writer(out: Path, die_in: str) -> None:
    """Run a writer in a child process that is killed with SIGKILL in the middle of ``atomic_dir(out)``: while
    writing the staging folder (``block``), or between the two renames of the swap (``swap``)."""
    script = f"""
        import os, signal
        from pathlib import Path
        from chipfit.fsutil import atomic_dir
        real_rename = os.rename
        def rename(src, dst):
            if {die_in!r} == "swap" and ".tmp-" in os.fspath(src):  # the old version is aside, the new not in
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(src, dst)
        os.rename = rename
        with atomic_dir(Path({str(out)!r})) as stage:
            (stage / "model.onnx").write_bytes(b"half of the new")
            if {die_in!r} == "block":
                os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_dead_writers_staging_folder_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with atomic_dir(out) as stage:
        (stage / "model.onnx").write_bytes(b"old model")
    _killed_writer(out, "block")
    dead = _debris(out)
    assert len(dead) == 1 and dead[0].startswith(".art.tmp-")  # what kill -9 leaves
    with atomic_dir(out) as live:  # this process's own staging folder, open while another write runs
        (live / "model.onnx").write_bytes(b"outer")
        with atomic_dir(out) as stage:
            (stage / "model.onnx").write_bytes(b"inner")
        assert _debris(out) == [live.name]  # the dead writer's folder is gone, the live one kept
        assert live.is_dir() and _files(live) == {"model.onnx": b"outer"}
    assert _files(out) == {"model.onnx": b"outer"} and _debris(out) == []


def test_a_writer_killed_between_the_renames_gets_its_old_version_put_back(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with atomic_dir(out) as stage:
        (stage / "model.onnx").write_bytes(b"old model")
    _killed_writer(out, "swap")
    assert not out.exists() and len(_debris(out)) == 2  # the old version aside, the new one staged
    with atomic_dir(out) as stage:
        assert _files(out) == {"model.onnx": b"old model"}  # put back before anything else happens
        assert _debris(out) == [stage.name]
        (stage / "model.onnx").write_bytes(b"new model")
    assert _files(out) == {"model.onnx": b"new model"} and _debris(out) == []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(what: str, check: Callable[[], object], limit_s: float = 10.0) -> object:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {limit_s:.0f}s")


@contextlib.contextmanager
def _killed_parent(cmd: list[str], find_child: Callable[[subprocess.Popen[bytes]], int | None]) -> Iterator[int]:
    """Start ``cmd``, wait for the child that ``find_child(parent)`` names, kill -9 the parent alone (not its
    process group) and yield the child's pid; the child is killed at the end whatever happened."""
    parent = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child = 0
    try:
        found = _wait_for("the child process started", lambda: find_child(parent))
        child = found if isinstance(found, int) else 0
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        yield child
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and not _gone(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)


def _hanging_job(tmp_path: Path) -> WorkerJob:
    model = make_mlp(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    (tmp_path / "variants").mkdir()
    return WorkerJob(
        model_path=model,
        model_sha256=onnx_file_hash(model),
        backend="fault_backends:hang",  # compiles, then hangs in its first run: a worker that never ends alone
        batch=1,
        input_names=("x",),
        data_dir=Dataset({"x": x}).save(tmp_path / "data"),
        variants_dir=tmp_path / "variants",
        timing=FAST_TIMING,
        quality=QualityJob(chunk=8, fidelity_metric="cosine"),
    )


def test_a_measurement_worker_dies_with_its_killed_parent(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(_hanging_job(tmp_path).to_json())
    script = """
        import sys
        from pathlib import Path
        from chipfit.measure.job import WorkerJob
        from chipfit.measure.runner import run_worker
        run_worker(WorkerJob.from_json(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), 600, None, 1)
    """
    cmd = [sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "job.json"), str(tmp_path / "w")]

    def worker(parent: subprocess.Popen[bytes]) -> int | None:
        kids = psutil.Process(parent.pid).children()
        return next((k.pid for k in kids if "chipfit.measure.worker" in " ".join(k.cmdline())), None)

    with _killed_parent(cmd, worker) as pid:
        _wait_for(f"worker {pid} gone after its parent was killed", lambda: _gone(pid))


TRAINABLE = """
import os, time
from pathlib import Path

def train(ctx):
    Path(os.environ["CHIPFIT_TEST_PIDFILE"]).write_text(str(os.getpid()))
    time.sleep(600)  # trains until the run is killed
"""

SPACE = """
trainable: trainable.py:train
metric: accuracy
resource: {min: 1, max: 3}
seconds_per_unit: 0.05
sampler: random
params:
  quality: {type: float, low: 0.01, high: 1.0}
"""


def test_an_explore_trial_dies_with_its_killed_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "trainable.py").write_text(TRAINABLE)
    (tmp_path / "space.yaml").write_text(SPACE)
    pidfile = tmp_path / "trial.pid"
    monkeypatch.setenv("CHIPFIT_TEST_PIDFILE", str(pidfile))
    cmd = [sys.executable, "-m", "chipfit.cli", "explore", str(tmp_path / "space.yaml"), "--budget", "600s"]
    cmd += ["--max-trials", "1", "--store", f"sqlite:///{tmp_path}/study.db", "--out", str(tmp_path / "o"), "-q"]

    def trial(parent: subprocess.Popen[bytes]) -> int | None:
        return int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text() else None

    with _killed_parent(cmd, trial) as pid:
        _wait_for(f"trial {pid} gone after its parent was killed", lambda: _gone(pid))


class _Waits(logging.Handler):
    """Sets ``event`` when a run logs that it waits for the measurement lock."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for another run" in record.getMessage():
            self.event.set()


@pytest.fixture
def waits() -> Iterator[_Waits]:
    handler = _Waits()
    logger = logging.getLogger("chipfit")
    level = logger.level
    logger.setLevel(logging.INFO)  # an earlier `-q` command in this process may have raised it
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_two_runs_on_the_same_cores_take_turns(tmp_path: Path, waits: _Waits) -> None:
    order: list[str] = []
    first_in, first_go, second_in = threading.Event(), threading.Event(), threading.Event()
    outcomes = []

    def first() -> None:
        with measurement_lock(tmp_path, cpus=[2, 3], what="run A"):
            first_in.set()
            first_go.wait(30)
            order.append("first out")

    def second() -> None:
        with measurement_lock(tmp_path, cpus=[3, 2], wait_s=60) as outcome:
            order.append("second in")
            outcomes.append(outcome)
            second_in.set()

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(10)
    b = threading.Thread(target=second)
    b.start()
    assert waits.event.wait(10)  # the second says it waits for the other run
    assert not second_in.is_set()  # and it is not in while the first holds the cores
    first_go.set()
    a.join(10)
    b.join(10)
    assert order == ["first out", "second in"]
    assert outcomes[0].held and outcomes[0].note is None


def test_runs_on_disjoint_cores_do_not_wait_for_each_other(tmp_path: Path, waits: _Waits) -> None:
    # the second would wait here (5 s, then measure anyway: not held) if the two core sets shared a lock
    with measurement_lock(tmp_path, cpus=[0, 1]) as a, measurement_lock(tmp_path, cpus=[2, 3], wait_s=5) as b:
        assert a.held and b.held and b.waited_s == 0.0
    assert not waits.event.is_set()


def test_a_measurement_after_waiting_past_the_bound_is_recorded_as_under_concurrent_load(
    tmp_path: Path, mlp: Path, mlp_npz: Path, fast_settings: MeasureSettings, waits: _Waits
) -> None:
    home = tmp_path / "home"
    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1,),
        threads=(1,),
        opt_levels=("all",),
        execution_modes=("sequential",),
        passes=(),
    )
    store = f"sqlite:///{tmp_path}/store.db"
    settings = replace(fast_settings, lock_wait_s=0.05)
    with measurement_lock(home, cpus=cpu_set(), what="another fit"):  # another run holds this run's cores
        busy = chipfit.fit(mlp, mlp_npz, space=space, settings=settings, store=store, home=home)
    assert waits.event.is_set()
    measured = [r for r in busy.candidates if r.source == "measured"]
    assert measured and all(r.measurement.ok for r in measured)
    for r in measured:
        assert r.measurement.metrics[CONCURRENT_LOAD] is True
        assert any("concurrent load" in n and "another fit" in n for n in r.measurement.notes)
    again = chipfit.fit(mlp, mlp_npz, space=space, settings=settings, store=store, home=home)
    clean = [r for r in again.candidates if r.source != "skipped"]
    assert clean and all(r.source == "measured" for r in clean)  # not reused from the store: measured again
    assert all(CONCURRENT_LOAD not in r.measurement.metrics for r in clean)
