"""``chipfit compile``: a deployable module for a catalogue target you may not have (e.g. a Graviton or a
Raspberry Pi from an x86 laptop), compiled by a backend that can cross-compile (TVM), and checked against
ONNX Runtime on this machine by running it under qemu-user where an emulator and sysroot are installed.

The artifact has the layout of ``fit``'s (model.onnx, the compiled library, manifest.json) so that
``chipfit.runtime.load`` reopens it on the target; the manifest records whether and how it was checked.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.errors import BackendUnavailableError, SpecError

__all__ = ["CompileResult", "compile_for_target"]

_CROSS_BACKENDS = ("tvm",)


@dataclass
class CompileResult:
    out: Path
    target: str
    backend: str
    check: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.check["status"] != "failed"


def _inputs_for_check(model: Any, data: Any, samples: int, batch: int | None) -> dict[str, np.ndarray]:
    """Evaluation inputs: from ``data`` when given, else seeded random ones of the model's input specs."""
    from chipfit.data import load_data, validate_data

    n = batch or samples
    if data is not None:
        ds = validate_data(load_data(data), model)
        return {k: np.ascontiguousarray(v[:n]) for k, v in ds.inputs.items()}
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model.inputs:
        shape = [d if isinstance(d, int) else (n if i == 0 else 1) for i, d in enumerate(spec.shape)]
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def _check(
    lib: Path, model_path: Path, feeds: dict[str, np.ndarray], order: list[str], chain: Any, entry: Any
) -> dict[str, Any]:
    """Run the module (under qemu for a foreign architecture) and compare with ONNX Runtime here."""
    from chipfit.backends import get_backend
    from chipfit.backends.tvm import run_module
    from chipfit.hardware.detect import local_machine

    why = chain.check_unavailable()
    missing = sorted(set(entry.isa) - set(local_machine()["cpu"]["isa"]))
    if chain.native and missing:  # qemu-user does not emulate AVX-512/AMX either
        why = f"the target's instructions {', '.join(missing)} are not on this CPU, so the module cannot run here"
    if why:
        return {"status": "not checked", "reason": why}
    ort = get_backend("onnxruntime")
    session = ort.compile(model_path, "cpu", {})
    try:
        expected = session.run(feeds)
    finally:
        session.close()
    how = "natively" if chain.native else f"under {Path(chain.qemu).name} with sysroot {chain.sysroot}"
    try:
        got = run_module(lib, feeds, order)
    except Exception as exc:  # the module crashed or the emulator failed: recorded, not raised
        return {"status": "failed", "how": how, "reason": str(exc)[-800:]}
    worst, ok = 0.0, len(got) == len(expected)
    for g, e in zip(got, expected, strict=False):
        if g.shape != e.shape:
            return {"status": "failed", "how": how, "reason": f"output shape {g.shape} != reference {e.shape}"}
        err = float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0
        scale = float(np.max(np.abs(e))) if e.size else 1.0
        worst = max(worst, err / max(scale, 1e-12))
        ok = ok and bool(np.allclose(g, e, rtol=1e-3, atol=1e-4 * max(scale, 1.0)))
    return {
        "status": "passed" if ok else "failed",
        "how": how,
        "samples": int(next(iter(feeds.values())).shape[0]),
        "max_rel_error": worst,
        "reference": f"onnxruntime {ort.version()} on this machine",
    }


def compile_for_target(
    model: str | Path | Any,
    target: str,
    out: str | Path,
    *,
    backend: str = "tvm",
    batch: int | None = None,
    data: Any = None,
    check: bool = True,
    samples: int = 4,
    catalog: tuple[str | Path, ...] = (),
) -> CompileResult:
    """Compile ``model`` for catalogue ``target`` into the artifact folder ``out`` and check it where possible."""
    from chipfit import __version__
    from chipfit.backends import get_backend
    from chipfit.fsutil import atomic_dir, sha256_file
    from chipfit.hardware.catalog import get_target
    from chipfit.hardware.cross import toolchain
    from chipfit.hardware.detect import local_machine
    from chipfit.model import load_model, onnx_files
    from chipfit.package import MANIFEST, check_writable
    from chipfit.provenance import mark

    out = check_writable(Path(out))
    entry = get_target(target, catalog)
    if backend not in _CROSS_BACKENDS:
        raise SpecError(f"--backend: '{backend}' cannot compile for other targets; use one of {_CROSS_BACKENDS}.")
    if batch is not None and batch < 1:
        raise SpecError(f"--batch must be ≥ 1, got {batch}.")
    # The user's input is validated before the environment: a missing model is "does not exist" whatever
    # toolchain is absent here.
    m = load_model(model)
    order = [t.name for t in m.inputs]
    feeds = _inputs_for_check(m, data, samples, batch) if check else {}
    impl = get_backend(backend)
    cross = getattr(impl, "cross_compile", None)
    reason = impl.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"chipfit compile needs backend '{backend}': {reason}")
    if not entry.tvm or cross is None:
        raise SpecError(
            f"--target: '{target}' ({entry.title}) has no CPU compile target for {backend}; its accelerator is "
            "reached through a runtime on the device (ONNX Runtime's CUDA/TensorRT providers). Pick a CPU target."
        )
    chain = toolchain(entry.arch, str(entry.tvm.get("mtriple", "")))
    if not chain.compiler:
        raise SpecError(f"--target: compiling for {entry.arch} needs a cross compiler here: {chain.install_hint}.")
    with atomic_dir(out) as staging:  # an interrupted compile keeps the artifact that was there
        for p in onnx_files(m.path):
            shutil.copy2(p, staging / ("model.onnx" if p == m.path else p.name))
        options: dict[str, Any] = {"threads": entry.cores} | ({"batch": batch} if batch else {})
        try:
            runtime_options = cross(staging / "model.onnx", entry, options, staging)
        except ValueError as exc:
            raise SpecError(f"--target {target}: {exc}") from None
        result = (
            _check(staging / "model.so", staging / "model.onnx", feeds, order, chain, entry)
            if check
            else {"status": "not checked", "reason": "--no-check"}
        )
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "format": 1,
            "chipfit_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "feasible": True,
            "kind": "cross-compiled",
            "model": {"file": "model.onnx", "sha256": files, "source": m.summary()},
            "provenance": mark(files),
            "backend": backend,
            "target": target,
            "target_info": {"title": entry.title, "arch": entry.arch, "tvm": dict(entry.tvm)},
            "runtime_options": runtime_options,
            "check": result,
            "measurements": None,
            "built_on": {k: local_machine()[k] for k in ("cpu", "os")},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return CompileResult(out, target, backend, result, manifest)
