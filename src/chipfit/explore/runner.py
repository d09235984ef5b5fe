"""Where trials run: a local process each (``LocalRunner``) or a Ray task each (``RayRunner``, ``--ray``).

Both give the study the same three calls — start a job, poll for its outcome, kill it — so the budget
accounting (the study charges each trial the time from its start to its outcome) is the same on one machine
and on a cluster. Local trials start from a forkserver that has already imported torch and optuna, so a
trial's start costs a fork, not an interpreter and a torch import. A local trial dies with the study's process,
even one killed with SIGKILL (``measure.lifetime``): it watches a pipe the runner holds open, and on Linux the
kernel kills it when the forkserver (which exits with the study's process) goes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from chipfit.errors import SpecError
from chipfit.explore.job import ProtocolError, TrialJob, TrialOutcome, dumps, load_outcome
from chipfit.measure import lifetime

__all__ = ["LocalRunner", "RayRunner", "Runner", "make_runner"]

CUT = "cut at the budget's limit"


class Runner(Protocol):
    name: str

    def start(self, job: TrialJob) -> Any: ...

    def poll(self, handle: Any) -> TrialOutcome | None:
        """The outcome once the trial ended, else None."""

    def kill(self, handle: Any) -> None: ...

    def ready(self) -> None:
        """Block until trials can start at once (called before the budget's clock starts)."""

    def close(self) -> None: ...


def _noop() -> None:
    pass


def _forked_trial(alive: Any, job: str, env: dict[str, str] | None = None) -> None:
    """A local trial's process: it dies with its parent, the forkserver (Linux's parent-death signal; a
    forkserver already gone means the runner is too, which the watch sees), and at end-of-file on ``alive``,
    the runner's pipe (everywhere); then it runs the trial with the runner's ``CHIPFIT_*`` environment (the
    forkserver keeps the environment of the moment it started: a process that changed CHIPFIT_HOME since would
    run its trials in the old home, whose key does not verify what this run signed)."""
    if env is not None:
        for name in [k for k in os.environ if k.startswith("CHIPFIT_")]:
            del os.environ[name]
        os.environ.update(env)
    from chipfit.explore.trial import run_trial_to_file

    lifetime.set_parent_death_signal()
    lifetime.watch(alive.fileno())
    run_trial_to_file(job)


class LocalRunner:
    name = "local"

    def __init__(self, space_path: str | None = None) -> None:
        self._ctx = mp.get_context("forkserver")
        if space_path:
            os.environ["CHIPFIT_EXPLORE_SPACE"] = str(space_path)  # read by _preload in the server
        # _preload imports the trainable, and torch (with dynamo) only when the trainable uses torch
        preload = ["chipfit.explore.trial", "chipfit.explore.runner", "optuna", "chipfit.explore._preload"]
        self._ctx.set_forkserver_preload(preload)
        # trials read end-of-file on this pipe when this process dies; nothing is ever written to it
        self._alive_r, self._alive_w = self._ctx.Pipe(duplex=False)
        # starts the server (and its imports) now, alongside the study's set-up, and before the budget's clock
        self._warm: Any = self._ctx.Process(target=_noop)
        self._warm.start()

    def ready(self) -> None:
        """Wait until the server has its imports (the budget's clock starts after)."""
        if self._warm is not None:
            self._warm.join()
            self._warm = None

    def start(self, job: TrialJob) -> Any:
        fd, name = tempfile.mkstemp(prefix="chipfit-trial-", suffix=".json")
        os.close(fd)
        out = Path(name)
        text = dumps(replace(job, outcome_file=str(out)))
        env = {k: v for k, v in os.environ.items() if k.startswith("CHIPFIT_")}
        proc = self._ctx.Process(target=_forked_trial, args=(self._alive_r, text, env), daemon=True)
        proc.start()
        return {"proc": proc, "out": out, "killed": False}

    def poll(self, handle: Any) -> TrialOutcome | None:
        if handle["proc"].is_alive():
            return None
        handle["proc"].join()
        outcome: TrialOutcome | None = None
        try:
            text = handle["out"].read_text()
            outcome = load_outcome(text) if text else None
        except (OSError, ProtocolError):
            outcome = None
        handle["out"].unlink(missing_ok=True)
        if outcome is None:
            code = handle["proc"].exitcode
            outcome = (
                TrialOutcome("stopped", reason=CUT)
                if handle["killed"]
                else TrialOutcome.failed(f"the trial process died (exit {code})")
            )
        return outcome

    def kill(self, handle: Any) -> None:
        if handle["proc"].is_alive():
            handle["proc"].kill()
            handle["killed"] = True

    def close(self) -> None:
        self.ready()  # never leave the warm-up process unjoined


class RayRunner:
    """Each trial a Ray task holding ``threads`` CPUs (``max_calls=1``: a fresh worker process per trial, so a
    memory cap or a crash does not outlive it). The study's database must be reachable from every node: a
    SQLite file works for a single-node Ray; use a server URL (``--store postgresql://...``) on a cluster."""

    name = "ray"

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise SpecError("--ray needs Ray: pip install 'chipfit[ray]'.") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                if address == "local":  # a Ray of its own, not a cluster `ray start` left as the machine's current
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SpecError(
                    f"--ray {address}: cannot connect to a Ray cluster ({exc}). Start one with `ray start --head` "
                    "and pass its address, 'auto', or 'local' to start a local Ray."
                ) from None
            self._owned = True
        else:
            self._owned = False
        from chipfit.explore.trial import run_trial_json

        self._remote = ray.remote(max_calls=1)(run_trial_json)

    def start(self, job: TrialJob) -> Any:
        ref = self._remote.options(num_cpus=job.threads).remote(dumps(job))
        return {"ref": ref, "killed": False}

    def poll(self, handle: Any) -> TrialOutcome | None:
        ray = self._ray
        if handle["killed"]:  # force-cancelled: its worker is being killed; the time it is charged ends here
            return TrialOutcome("stopped", reason=CUT)
        done, _ = ray.wait([handle["ref"]], timeout=0)
        if not done:
            return None
        try:
            return load_outcome(ray.get(done[0]))
        except ProtocolError as exc:
            return TrialOutcome.failed(f"the Ray task answered in another format: {exc}")
        except Exception as exc:  # the worker died (killed at the limit, or crashed hard)
            return TrialOutcome.failed(f"the Ray task died: {type(exc).__name__}: {str(exc)[:300]}")

    def kill(self, handle: Any) -> None:
        handle["killed"] = True
        self._ray.cancel(handle["ref"], force=True)

    def ready(self) -> None:
        pass

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()


def make_runner(ray_address: str | None, space_path: str | None = None) -> Runner:
    return RayRunner(ray_address) if ray_address else LocalRunner(space_path)
