"""MetaSchedule tuning for the TVM backend (tvm 0.27: ``tvm.s_tir.meta_schedule``), budgeted and resumable.

The tuning database is a MetaSchedule JSONDatabase in chipfit's home (``tvm-tuning/<target>/``), shared by
every model and run on that target: a workload (an operator with its shapes) already tuned there is not
tuned again, whichever model it came from. Records are appended as they are measured, so a tuning run that
is killed keeps what it tuned. Tuning proceeds in rounds of ``TRIALS_PER_ROUND`` trials per untuned task
until each has its trials or the time budget is spent; progress goes to the log (and to stderr in the
measurement worker).

Two fixes the stock setup needs here (measured with apache-tvm 0.27.0.post1): the default builder imports
``tvm.s_tir.tensor_intrin`` (≈43 s) in every build worker and times out, so a build function without that
import is given; and apache-tvm-ffi 0.1.15 segfaults when MetaSchedule serializes modules, so the ``[tvm]``
extra pins 0.1.14.post1 and tuning refuses to start with a known-bad version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TRIALS_PER_ROUND", "TuneReport", "database_dir", "tune"]

log = logging.getLogger("chipfit")
TRIALS_PER_ROUND = 16
SECONDS_PER_TRIAL = 2.0  # build + run of one schedule on 2 cores (measured: 68 trials in 136 s), until measured
_BAD_FFI = ("0.1.15",)


def fast_build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build function without its 43-second ``tensor_intrin`` import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def database_dir(home: Path, target_json: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(target_json, sort_keys=True).encode()).hexdigest()[:12]
    path = home / "tvm-tuning" / f"{target_json.get('kind', 'llvm')}-{target_json.get('mcpu', 'generic')}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_database(folder: Path) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(
        path_workload=str(folder / "database_workload.json"),
        path_tuning_record=str(folder / "database_tuning_record.json"),
        allow_missing=True,
    )


class TuneReport(dict):  # type: ignore[type-arg]
    """tasks, reused (tasks the database already covered), tuned, trials, seconds, stopped_by."""


def _check_ffi() -> None:
    try:
        from importlib.metadata import version

        v = version("apache-tvm-ffi")
    except Exception:
        return
    if v.startswith(_BAD_FFI):
        raise RuntimeError(
            f"MetaSchedule tuning segfaults with apache-tvm-ffi {v}; install the pinned version: "
            "pip install 'apache-tvm-ffi==0.1.14.post1' (or pip install 'chipfit[tvm]')"
        )


def _coverage(db: Any, task: Any) -> int:
    mod = task.dispatched[0]
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 10_000))


def _key(task: Any) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(task.dispatched[0]))


class _Exhausted:
    """Tasks whose schedule space yielded nothing new in a round (a reshape has one schedule): done, and
    remembered in the database folder so later runs do not spend a round finding that out again."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "exhausted.json"
        self.keys: set[str] = set(json.loads(self.path.read_text())) if self.path.exists() else set()

    def add(self, key: str) -> None:
        self.keys.add(key)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.keys)))
        tmp.replace(self.path)


def tune(mod: Any, target: Any, folder: Path, trials: int, time_s: float | None, cores: int) -> TuneReport:
    """Tune ``mod``'s tasks to ``trials`` measured schedules each (those the database already has count),
    stopping between rounds once ``time_s`` is spent. Returns what happened; the database is in ``folder``."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    _check_ffi()
    # MetaSchedule's console handler takes this logger's level: its per-trial tables and cost-model lines go
    # to the log files in the database folder, the console gets chipfit's round-by-round progress
    if logging.getLogger("tvm.s_tir.meta_schedule").level in (logging.NOTSET, logging.DEBUG, logging.INFO):
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    start = time.monotonic()
    db = open_database(folder)
    tasks = extract_tasks(mod, target)
    report = TuneReport(tasks=len(tasks), reused=0, tuned=0, trials=0, rounds=0, seconds=0.0, stopped_by="done")
    exhausted = _Exhausted(folder)
    done = lambda t: _coverage(db, t) >= trials or _key(t) in exhausted.keys  # noqa: E731
    report["reused"] = sum(done(t) for t in tasks)
    per_task = max(1, min(TRIALS_PER_ROUND, trials))
    max_rounds, rnd, sec_per_trial = -(-trials // per_task) + 1, 0, SECONDS_PER_TRIAL
    while True:
        todo = [t for t in tasks if not done(t)]
        if not todo:
            break
        elapsed = time.monotonic() - start
        if time_s is not None:  # size the round to what the budget left can pay for, at the rate seen so far
            affordable = int((time_s - elapsed) / (sec_per_trial * len(todo)))
            if affordable < 1:
                report["stopped_by"] = "time budget"
                break
            per_task = max(1, min(per_task, affordable))
        if rnd >= max_rounds:
            report["stopped_by"] = "round limit"
            break
        rnd += 1
        _progress(f"tvm tuning round {rnd}: {len(todo)} of {len(tasks)} tasks, {per_task} trials each")
        # evolutionary search (population 512, cost model) pays off from a full round; below it, random traces
        strategy = "evolutionary" if per_task >= TRIALS_PER_ROUND else "replay-trace"
        contexts, weights = extracted_tasks_to_tune_contexts(
            todo, str(folder / "logs"), strategy=strategy, num_threads=cores, seed=rnd
        )
        before, counts = len(db), [_coverage(db, t) for t in todo]
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(folder / "logs"),
            max_trials_global=per_task * len(todo),
            max_trials_per_task=per_task,
            num_trials_per_iter=per_task,
            builder=ms.builder.LocalBuilder(max_workers=cores, timeout_sec=120, f_build=fast_build),
            runner=ms.runner.LocalRunner(timeout_sec=60),
            database=db,
        )
        report["trials"] += len(db) - before
        for t, n in zip(todo, counts, strict=True):
            if _coverage(db, t) - n < max(1, per_task // 4):  # its space yields (almost) nothing new
                exhausted.add(_key(t))
        sec_per_trial = max(0.05, (time.monotonic() - start - elapsed) / max(1, per_task * len(todo)))
        _progress(f"tvm tuning: {report['trials']} trials measured, {time.monotonic() - start:.0f}s")
    report["rounds"] = rnd
    report["tuned"] = len(tasks) - report["reused"]
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


def _progress(text: str) -> None:
    log.info(text)
    print(text, file=sys.stderr, flush=True)
