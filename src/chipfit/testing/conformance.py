"""The backend conformance kit: what makes a backend "done".

``check_backend(backend)`` compiles the reference models (an MLP, a CNN, a transformer block, all with a
dynamic batch dimension), runs them and compares the outputs with numpy references within a tolerance
suited to the dtype; checks that the capabilities it reports are true (a backend claiming dynamic shapes
runs batch 1 and 5 on one executable; one claiming int8 runs a quantized graph; an unsupported target is
refused); and that an unsupported operator fails with an exception naming the operator, not a crash or
silent garbage. ``assert_conforms`` raises AssertionError listing every failed check.

A backend that runs torch programs instead of ONNX (``source = "torch"``) gets each reference model as a
saved ``torch.export`` program beside the ONNX file.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.testing.reference_models import (
    UNSUPPORTED_OP,
    ReferenceModel,
    int8_mlp,
    reference_models,
    save_torch_program,
    unsupported_model,
)

__all__ = ["TOLERANCE", "Check", "ConformanceReport", "assert_conforms", "check_backend"]

# (rtol, atol) per dtype a backend computes in
TOLERANCE = {"float32": (1e-3, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (5e-2, 5e-2), "int8": (1e-2, 1e-2)}
BATCHES = (1, 5)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    backend: str
    target: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def text(self) -> str:
        lines = [f"conformance of backend '{self.backend}' on {self.target}:"]
        lines += [
            f"  {'ok  ' if c.passed else 'FAIL'} {c.name}{': ' + c.detail if c.detail else ''}" for c in self.checks
        ]
        return "\n".join(lines)


def _compare(got: Any, want: np.ndarray, dtype: str) -> str | None:
    """None when ``got`` matches ``want`` within the dtype's tolerance, else what differs."""
    rtol, atol = TOLERANCE[dtype]
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"output shape {got.shape}, expected {want.shape}"
    if not np.all(np.isfinite(got)):
        return "output has NaN or inf"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        return f"{int(bad.sum())} of {bad.size} values off (max abs error {err.max():.3g}; rtol {rtol}, atol {atol})"
    return None


class _Kit:
    def __init__(self, backend: Any, target: str, folder: Path, dtype: str, options: dict[str, Any]) -> None:
        self.b, self.target, self.folder, self.dtype, self.options = backend, target, folder, dtype, options
        self.report = ConformanceReport(getattr(backend, "name", type(backend).__name__), target)
        self.torch_source = getattr(backend, "source", "onnx") == "torch"

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            problem = f"{type(exc).__name__}: {str(exc)[:300]} (at {Path(tb.filename).name}:{tb.lineno})"
        self.report.checks.append(Check(name, problem is None, problem or ""))

    def path(self, ref: ReferenceModel) -> Path:
        p = ref.save(self.folder)
        if self.torch_source and not p.with_suffix(".pt2").exists():
            save_torch_program(ref, p.with_suffix(".pt2"))
        return p

    def compile(self, path: Path, batch: int | None = None) -> Any:
        caps = self.b.capabilities
        options = {"batch": batch} if batch is not None and caps.specializes_batch else {}
        return self.b.compile(path, self.target, {**self.options, **options})

    def identity(self) -> str | None:
        if not isinstance(getattr(self.b, "name", None), str) or not self.b.name:
            return "backend has no name"
        reason = self.b.unavailable_reason()
        if reason is not None:
            return f"unavailable here: {reason}"
        if not isinstance(self.b.version(), str):
            return f"version() returned {self.b.version()!r}, expected a string"
        devices = list(self.b.devices())
        kinds = {d.split(":")[0].split()[0] for d in devices}
        if not devices or self.target not in kinds:
            return f"devices() is {devices}: it should list the target '{self.target}' the kit runs on"
        caps = self.b.capabilities
        if not caps.devices or not set(kinds) <= set(caps.devices):
            return f"devices() {sorted(kinds)} are not all in capabilities.devices {list(caps.devices)}"
        if "float32" not in caps.dtypes:
            return f"capabilities.dtypes {list(caps.dtypes)} lacks float32"
        return None

    def model(self, ref: ReferenceModel) -> str | None:
        path = self.path(ref)
        batches = BATCHES if self.b.capabilities.dynamic_shapes else BATCHES[-1:]
        exe = None if self.b.capabilities.specializes_batch else self.compile(path)
        for batch in batches:
            e = self.compile(path, batch) if exe is None else exe
            if list(e.input_names) != ["x"] or list(e.output_names) != ["y"]:
                return f"names {list(e.input_names)} → {list(e.output_names)}, expected ['x'] → ['y']"
            x = ref.inputs(batch)
            outs = e.run({"x": x})
            if len(outs) != 1:
                return f"{len(outs)} outputs, expected 1"
            problem = _compare(outs[0], ref.expected(x), self.dtype)
            if problem:
                return f"batch {batch}: {problem}"
            if exe is None:
                e.close()
        if exe is not None:
            exe.close()
        return None

    def int8(self) -> str | None:
        if "int8" not in self.b.capabilities.dtypes or self.torch_source:
            return None
        ref = int8_mlp()
        exe = self.compile(ref.save(self.folder), 3)
        x = ref.inputs(3)
        return _compare(exe.run({"x": x})[0], ref.expected(x), "int8")

    def unsupported_target(self) -> str | None:
        ref = reference_models()[0]
        try:
            self.compile(self.path(ref), 1).run({"x": ref.inputs(1)})
        except Exception:
            return None
        return "compile(target='no-such-device') did not raise; capabilities.devices must be honest"

    def unsupported_op(self) -> str | None:
        import onnx

        path = self.folder / "unsupported.onnx"
        onnx.save_model(unsupported_model(), str(path))
        x = np.ones((2, 4), np.float32)
        try:
            self.compile(path, 2).run({"x": x})
        except Exception as exc:
            expected = "program" if self.torch_source else UNSUPPORTED_OP
            if expected.lower() not in str(exc).lower():
                return f"raised {type(exc).__name__} without naming '{expected}': {str(exc)[:200]}"
            return None
        return f"a graph with the unsupported operator {UNSUPPORTED_OP} ran instead of failing"


def check_backend(
    backend: Any,
    target: str = "cpu",
    dtype: str = "float32",
    options: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> ConformanceReport:
    """Run every conformance check on ``backend`` (a Backend or a backend name) for ``target``, compiling
    with ``options`` (e.g. ``{"mode": "compile"}``) plus the batch for backends that specialize to it."""
    if isinstance(backend, str):
        from chipfit.backends import get_backend

        backend = get_backend(backend)
    with tempfile.TemporaryDirectory(prefix="chipfit-conformance-", dir=workdir) as tmp:
        kit = _Kit(backend, target, Path(tmp), dtype, dict(options or {}))
        kit.check("identity: available, version, devices, capabilities", kit.identity)
        if kit.report.checks[0].passed:
            for ref in reference_models():
                kit.check(
                    f"{ref.name}: outputs match numpy at batch {'/'.join(map(str, BATCHES))}",
                    partial(kit.model, ref),
                )
            kit.check("int8: a quantized graph runs when capabilities claim int8", kit.int8)
            saved, kit.target = kit.target, "no-such-device"
            kit.check("an unsupported target is refused", kit.unsupported_target)
            kit.target = saved
            kit.check(f"unsupported operator {UNSUPPORTED_OP}: fails naming it", kit.unsupported_op)
        return kit.report


def assert_conforms(
    backend: Any, target: str = "cpu", dtype: str = "float32", options: dict[str, Any] | None = None
) -> ConformanceReport:
    """``check_backend``, raising AssertionError with the report when any check fails."""
    report = check_backend(backend, target, dtype, options)
    if not report.passed:
        raise AssertionError(report.text())
    return report
