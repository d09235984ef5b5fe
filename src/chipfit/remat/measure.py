"""Peak memory and step time of one training step, measured in an isolated worker process.

The worker is a fresh interpreter (``python -m chipfit.remat.measure``) that the parent talks to over its
stdin/stdout, one JSON line per probe. Each probe builds the module afresh, runs the step (forward, loss,
backward, optimizer step) at one batch under one schedule, and answers with its peak and its time:

- **CPU**: the peak is the resident high-water mark (``VmHWM`` of /proc/self/status) while the module is built
  and the step runs, minus the resident memory of the worker with torch, chipfit.remat and the user's file
  imported and nothing built: so it covers parameters, gradients, optimizer state, activations and the
  allocator's slack. Before that baseline is read, the module runs one step at batch 1 as it is and one
  checkpointed, and is freed: what a first step initialises once (autograd's engine, the kernels' thread pools,
  the optimizer's import of torch._dynamo, about 70 MB) is not the model's memory. Before each probe the
  high-water mark is reset to the current resident size (``echo 5 > /proc/self/clear_refs``); where that file
  cannot be written, every probe runs in a worker of its own (slower, same numbers). Blocks of 128 KiB and
  more are returned to the system when freed (``MALLOC_MMAP_THRESHOLD_`` fixed, so glibc does not keep them).
  Margin: a probe leaves a few MB of small freed blocks resident (``drift_mb``, about 3 MB on a 2048×256 MLP);
  the next probe reuses them, so its peak is unchanged (the same step measured before and after other probes
  agrees within 0.1 MB in our runs) but could read low by at most ``drift_mb`` if it did not reuse them.
- **CUDA**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
  before the module was built.

The step time is the median of the timed steps after one warm-up step (``min_steps=0``: the one step, warm-up
included, which is enough for a peak with SGD: it holds no state from one step to the next).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from chipfit.errors import ChipfitError, ModelError

__all__ = ["MeasureError", "Probe", "ProbeResult", "Worker", "measure_once"]

Schedule = Literal["none", "plan", "sequential", "compile"]
_RESET = "/proc/self/clear_refs"
MB = 2**20


class MeasureError(ChipfitError):
    """The measurement worker could not start or answer (its message names why)."""


@dataclass(frozen=True)
class Probe:
    """One step to measure: the batch, the schedule (``plan`` carries ``Plan.to_json()``), how long to time."""

    batch: int
    schedule: Schedule = "none"
    plan: dict[str, Any] | None = None
    segments: int = 0  # schedule "sequential": checkpoint_sequential's segments (0: √n)
    memory_budget: float = 1.0  # schedule "compile": torch._functorch.config.activation_memory_budget
    min_steps: int = 3
    min_time_s: float = 0.3
    max_steps: int = 20


@dataclass(frozen=True)
class ProbeResult:
    batch: int
    status: Literal["ok", "oom", "error"]
    peak_mb: float | None = None
    step_ms: float | None = None
    steps: int = 0
    drift_mb: float = 0.0  # resident memory above the baseline before the probe started (see the margin)
    error: str = ""
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class _Hello:
    step: dict[str, Any]
    device: str = "cpu"
    threads: int = 0
    warm_compile: bool = False  # probes will use torch.compile: its import and first compile before the baseline


# --------------------------------------------------------------------------------------------------- parent side
class Worker:
    """A measurement worker process; ``probe`` measures one step in it. Use as a context manager."""

    def __init__(
        self, step: Any, device: str = "cpu", threads: int = 0, timeout_s: float = 600.0, warm_compile: bool = False
    ) -> None:
        self.step, self.device, self.threads, self.timeout_s = step, device, threads, timeout_s
        self.warm_compile = warm_compile
        self.proc: subprocess.Popen[str] | None = None
        self.log: Any = None  # the worker's stderr (its last lines name why it died, if it does)
        self.baseline_mb: float | None = None
        self.can_reset = False

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (the worker's lifetime: closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chipfit.remat.measure"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        hello = _Hello(self.step.to_dict(), self.device, self.threads, warm_compile=self.warm_compile)
        reply = self._ask(asdict(hello), 300.0)
        if "error" in reply:
            self.close()
            raise ModelError(reply["error"]) if reply.get("kind") == "model" else MeasureError(reply["error"])
        self.baseline_mb, self.can_reset = float(reply["baseline_mb"]), bool(reply["can_reset"])

    def _ask(self, doc: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise MeasureError("the measurement worker is not running.")
        try:
            proc.stdin.write(json.dumps(doc) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return {"status": "error", "error": f"the worker exited (code {proc.poll()})"}
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line:
            tail = self._tail()
            self.close()
            code = proc.returncode
            why = f"timed out after {timeout_s:g} s" if not ready else f"exited with code {code}"
            if code in (-9, 137):
                why += " (killed: out of memory?)"
            why += tail
            return {"status": "oom" if code in (-9, 137) else "error", "error": f"the measurement worker {why}"}
        return json.loads(line)  # type: ignore[no-any-return]

    def _tail(self) -> str:
        if self.log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            lines = [line for line in self.log.read().splitlines() if line.strip()]
            return f": {' | '.join(lines[-3:])[-600:]}" if lines else ""
        return ""

    def probe(self, probe: Probe) -> ProbeResult:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        reply = self._ask({"probe": asdict(probe)}, self.timeout_s)
        if "batch" not in reply:
            reply = {"batch": probe.batch, "status": reply.get("status", "error"), "error": reply.get("error", "")}
        if not self.can_reset:  # no high-water reset here: the next probe needs a fresh worker
            self.close()
        return ProbeResult(**reply)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.log is not None:
            self.log.close()
            self.log = None


def measure_once(step: Any, probe: Probe, device: str = "cpu") -> ProbeResult:
    """One probe in a worker of its own."""
    with Worker(step, device) as w:
        return w.probe(probe)


# --------------------------------------------------------------------------------------------------- worker side
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{key} is not in /proc/self/status")


def _rss_mb() -> float:
    try:
        return _status_mb("VmRSS")
    except OSError:  # no /proc: the high-water mark is all there is
        return _hwm_mb()


def _hwm_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _reset_hwm() -> bool:
    try:
        with open(_RESET, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _scheduled(module: Any, probe: Probe, example: tuple[Any, ...], loss_fn: Any) -> Any:
    """The module that trains under ``probe``'s schedule."""
    import torch

    if probe.schedule == "plan":
        from chipfit.remat.apply import apply
        from chipfit.remat.plan import Plan

        return apply(module, Plan.from_json(probe.plan or {}))
    if probe.schedule == "sequential":
        from chipfit.remat.step import sequential

        return sequential(module, probe.segments)
    if probe.schedule == "compile":
        import torch._functorch.config as fconfig

        fconfig.activation_memory_budget = probe.memory_budget
        torch._dynamo.reset()
        # aot_eager: AOTAutograd's min-cut partitioner (where the memory budget acts) with eager kernels, so the
        # step time compares with the eager baseline's, and no C++ compiler is needed
        return torch.compile(module, backend="aot_eager")
    return module


def _run(spec: Any, probe: Probe, device: str, baseline_mb: float) -> dict[str, Any]:
    import torch

    from chipfit.remat.step import train_step

    cuda = device.startswith("cuda")
    _trim()
    drift = max(0.0, _rss_mb() - baseline_mb)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / MB
    else:
        _reset_hwm()
    module = spec.build_module().to(device)
    inputs = tuple(t.to(device) for t in spec.example_inputs(probe.batch))
    loss_fn = spec.loss_fn()
    runner = _scheduled(module, probe, inputs, loss_fn)
    opt = spec.make_optimizer(module)
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        train_step(runner, inputs, loss_fn, opt)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        timed = len(times) - 1
        if timed >= probe.max_steps or (timed >= probe.min_steps and time.perf_counter() - start >= probe.min_time_s):
            break
    peak = torch.cuda.max_memory_allocated() / MB - base if cuda else _hwm_mb() - baseline_mb
    del module, inputs, runner, opt
    return {
        "batch": probe.batch,
        "status": "ok",
        "peak_mb": round(peak, 3),
        "step_ms": round(statistics.median(times[1:] or times) * 1e3, 4),
        "steps": len(times) - 1,
        "drift_mb": round(drift, 3),
        "device": device,
    }


def _warm_up(spec: Any, compiled: bool = False) -> None:
    """The lazy one-time initialisation a first step does, done before the baseline is read: autograd's engine,
    the optimizer's first step (it imports torch._dynamo: about 70 MB), the kernels of the module's own ops and
    their thread pools, and torch.utils.checkpoint's machinery; on the module itself at batch 1, twice (as is
    and checkpointed; and compiled, when ``compiled``: torch.compile's imports are about 100 MB), then freed."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from chipfit.remat.step import train_step

    net = spec.build_module()
    inputs = spec.example_inputs(1)
    loss_fn = spec.loss_fn()
    opt = spec.make_optimizer(net)
    train_step(net, inputs, loss_fn, opt)

    class Whole(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return checkpoint(net, *args, use_reentrant=False)

    train_step(Whole(), inputs, loss_fn, opt)  # everything built here is freed when this returns
    if compiled:
        train_step(torch.compile(net, backend="aot_eager"), inputs, loss_fn, opt)
        torch._dynamo.reset()


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _serve() -> None:
    """The worker's loop: a hello line (the step), then one probe per line, one answer per line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # a user's print() must not corrupt the protocol
    doc = json.loads(sys.stdin.readline())
    hello = _Hello(**{k: v for k, v in doc.items() if k in _Hello.__dataclass_fields__})

    def say(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    try:
        import torch

        with contextlib.suppress(ImportError):  # imported before the baseline: apply() needs it
            import chipfit.remat.apply
            import chipfit.remat.plan  # noqa: F401
        from chipfit.remat.step import StepSpec, load_ref

        if hello.threads:
            torch.set_num_threads(hello.threads)
        spec = StepSpec.from_dict(hello.step)
        load_ref(spec.build, "the model")  # the user's file imported (its imports are not the model's memory)
        if spec.loss:
            spec.loss_fn()
        _warm_up(spec, hello.warm_compile)
        _trim()
        baseline = _rss_mb()
    except ChipfitError as exc:
        say({"error": str(exc), "kind": "model"})
        return
    except Exception as exc:
        say({"error": f"{type(exc).__name__}: {exc}"})
        return
    say({"baseline_mb": baseline, "can_reset": _reset_hwm() or hello.device.startswith("cuda")})
    for line in sys.stdin:
        probe = Probe(**json.loads(line)["probe"])
        try:
            say(_run(spec, probe, hello.device, baseline))
        except ChipfitError as exc:
            say({"batch": probe.batch, "status": "error", "error": str(exc)})
        except BaseException as exc:
            status = "oom" if _oom(exc) else "error"
            say({"batch": probe.batch, "status": status, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        gc.collect()
        if hello.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    _serve()
