"""Apache TVM (``pip install 'chipfit[tvm]'``, apache-tvm 0.27): the ONNX model imported by the Relax ONNX
frontend, compiled with LLVM for the detected CPU (``-mcpu`` and the core count of the CPU quota), run in
the Relax VM. MetaSchedule tuning is an option of the candidate (``tune_trials``, ``tune_time_s``); its
database lives in chipfit's home and is shared across runs and models (``_tvm_tune``).

Untuned TVM on CPU runs naive loops (≈80× slower than ONNX Runtime on a small conv net here): it is listed
and left to the latency probe, which prunes it in a second. Tuned candidates compile for a fixed batch
(``options["batch"]``); untuned ones keep the model's symbolic batch. A winner ships its compiled library
(``package``) and is reopened from it without recompiling. tvm is imported in this module and ``_tvm_tune``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.hardware.catalog import Target
    from chipfit.model import Model

__all__ = ["TvmBackend", "backend", "local_target"]

INSTALL = "pip install 'chipfit[tvm]'"


def local_target(cores: int) -> dict[str, Any]:
    """The LLVM target of this CPU, in TVM 0.27's dict form (the CLI string form is rejected)."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": int(cores)}


def _home() -> Path:
    from chipfit.workspace import default_home

    return default_home()


class TvmExecutable:
    def __init__(self, vm: Any, input_names: list[str], output_names: list[str], notes: list[str]) -> None:
        import tvm

        self._tvm = tvm
        self._vm = vm
        self.input_names = input_names
        self.output_names = output_names
        self.notes = notes

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [self._tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        out = self._vm["main"](*args)
        outs = out if isinstance(out, (tuple, list)) or type(out).__name__ == "Array" else [out]
        return [o.numpy() for o in outs]

    def close(self) -> None:
        self._vm = None


def _io(proto: Any) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    shapes = {
        i.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in i.type.tensor_type.shape.dim]
        for i in inputs
    }
    return [i.name for i in inputs], [o.name for o in proto.graph.output], shapes


class TvmBackend:
    name = "tvm"
    capabilities = Capabilities(
        devices=("cpu",), dtypes=("float32", "int8"), dynamic_shapes=True, specializes_batch=True
    )

    def unavailable_reason(self) -> str | None:
        try:
            import tvm
            from tvm import relax  # noqa: F401
        except ImportError:
            return f"apache-tvm is not installed: {INSTALL}"
        except Exception as exc:  # a wheel that does not load (wrong tvm-ffi ABI, missing libraries)
            return f"apache-tvm does not load ({type(exc).__name__}: {exc}); reinstall with {INSTALL}"
        if not tvm.runtime.enabled("llvm"):
            return "this apache-tvm build has no LLVM code generator; install the PyPI wheel: " + INSTALL
        from chipfit.hardware.cross import host_arch, toolchain

        chain = toolchain(host_arch())
        if not chain.compiler:  # export_library links the deployable model.so with it
            return f"TVM links compiled modules with the host C++ compiler, which is missing: {chain.install_hint}"
        return None

    def version(self) -> str | None:
        import tvm

        return str(tvm.__version__)

    def devices(self) -> list[str]:
        from tvm.target import codegen

        return [f"cpu llvm -mcpu={codegen.llvm_get_system_cpu()}"]

    def initialize(self) -> None:
        from tvm import relax  # noqa: F401

    def _target(self, target: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``cpu``: this machine; otherwise a catalogue target with a ``tvm`` entry (LLVM triple and CPU)."""
        if options.get("tvm_target"):  # recorded by cross_compile
            return dict(options["tvm_target"])
        if target == "cpu":
            from chipfit.hardware.detect import cpu_quota

            return local_target(int(options.get("threads") or cpu_quota()))
        from chipfit.hardware.catalog import get_target

        entry = get_target(target)
        if not entry.tvm:
            raise ValueError(
                f"tvm backend: catalogue target '{target}' names no TVM compile target (its 'tvm:' entry); "
                "pick a CPU target, or add `tvm: {kind: llvm, mtriple: ..., mcpu: ...}` to its row"
            )
        return {**dict(entry.tvm), "num-cores": int(options.get("threads") or entry.cores)}

    def cross_compile(self, model_path: Path, target: Target, options: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        """Compile for a catalogue target (any architecture LLVM targets) and link ``model.so`` with that
        architecture's compiler; returns the runtime options to record."""
        from tvm.support import cc

        from chipfit.hardware.cross import toolchain

        if not target.tvm:
            raise ValueError(f"tvm backend: catalogue target '{target.name}' has no 'tvm:' entry")
        target_json = {**dict(target.tvm), "num-cores": int(options.get("threads") or target.cores)}
        chain = toolchain(target.arch, str(target.tvm.get("mtriple", "")))
        if not chain.compiler:
            raise ValueError(f"tvm backend: no C++ compiler that links for {chain.arch}: {chain.install_hint}")
        ex, _ = self.build(model_path, target_json, {**options, "tune_time_s": 0})
        ex.export_library(str(dest / "model.so"), fcompile=cc.cross_compiler(chain.compiler))
        kept = {k: v for k, v in options.items() if not k.startswith("tune_")}
        return kept | {"library": "model.so", "tvm_target": target_json}

    def build(self, model_path: Path, target_json: dict[str, Any], options: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """Import, optionally tune, and compile; returns the TVM executable and notes on what was done."""
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        from chipfit.backends._tvm_onnx import fold_constant_of_shape

        proto = onnx.load(str(model_path))
        _, _, shapes = _io(proto)
        batch = options.get("batch")
        shape_dict = None
        if batch is not None:
            dims: dict[str, Any] = {}  # the other symbolic dims (e.g. a sequence length) stay symbolic, shared by name
            shape_dict = {
                n: [
                    d if isinstance(d, int) else int(batch) if i == 0 else dims.setdefault(d, tvm.tirx.Var(d, "int64"))
                    for i, d in enumerate(s)
                ]
                for n, s in shapes.items()
            }
        notes: list[str] = []
        folded = fold_constant_of_shape(proto)
        if folded:
            notes.append(
                f"tvm: {folded} ConstantOfShape with a constant shape folded (TVM's converter fails on scalars)"
            )
        try:
            mod = from_onnx(proto, shape_dict=shape_dict, keep_params_in_input=False)
        except Exception as exc:
            raise RuntimeError(
                f"tvm backend: TVM's ONNX importer could not convert '{model_path.name}': {_why(exc)}"
            ) from exc
        target = tvm.target.Target(target_json)
        try:
            with target:
                mod = relax.get_pipeline("zero")(relax.transform.DecomposeOpsForInference()(mod))
        except Exception as exc:
            raise RuntimeError(f"tvm backend: TVM could not lower '{model_path.name}' (imported): {_why(exc)}") from exc
        trials = int(options.get("tune_trials") or 0)
        if trials > 0:
            from chipfit.backends import _tvm_tune

            if batch is None:
                raise ValueError("tvm backend: tuning needs a fixed batch size (options['batch'])")
            folder = _tvm_tune.database_dir(_home(), target_json)
            report = _tvm_tune.tune(
                mod, target, folder, trials, options.get("tune_time_s"), target_json.get("num-cores", 1)
            )
            notes.append(
                f"tvm: MetaSchedule {report['trials']} new trials in {report['seconds']}s over {report['tasks']} tasks "
                f"({report['reused']} already in the tuning database); stopped by {report['stopped_by']}"
            )
            with target, _tvm_tune.open_database(folder):
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        try:
            return tvm.compile(mod, target=target), notes
        except Exception as exc:
            raise RuntimeError(
                f"tvm backend: TVM could not compile '{model_path.name}' (imported): {_why(exc)}"
            ) from exc

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> TvmExecutable:
        import onnx
        import tvm
        from tvm import relax

        target_json = self._target(target, options)
        inputs, outputs, _ = _io(onnx.load(str(model_path), load_external_data=False))
        os.environ.setdefault("TVM_NUM_THREADS", str(target_json["num-cores"]))
        if options.get("library"):
            lib = model_path.parent / str(options["library"])
            _check_arch(lib)
            ex, notes = tvm.runtime.load_module(str(lib)), [f"tvm: loaded {lib.name}"]
        else:
            ex, notes = self.build(model_path, target_json, options)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        return TvmExecutable(vm, inputs, outputs, notes)

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """Tuned with the run's tuning budget (``tune_trials: None`` is filled in by the space from
        ``--tune-trials`` / ``--tune-time``, and dropped without one), and untuned (the probe decides); a
        transformer in its canonical attention form."""
        from chipfit.passes.transformer_fusion import is_transformer

        options: list[dict[str, Any]] = [{"threads": cpus, "tune_trials": None}, {"threads": cpus, "tune_trials": 0}]
        # TVM 0.27's importer fails on Hugging Face exports' attention (SDPA guards, index-built masks) and
        # compiles its canonical form (the pass checks the rewrite against the original's outputs)
        variant = [{"name": "attention_canonical", "params": {}}] if is_transformer(model.path) else []
        return OptionSet(variants=[variant], options=options, reference_options=None)

    def package(self, model_path: Path, target: str, options: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        """Compile once more (the tuning database makes it quick) and ship the shared library."""
        ex, _ = self.build(model_path, self._target(target, options), {**options, "tune_time_s": 0})
        ex.export_library(str(dest / "model.so"))
        return {k: v for k, v in options.items() if not k.startswith("tune_")} | {"library": "model.so"}


def _why(exc: BaseException) -> str:
    """The converter's own reason: the last line of TVM's message (its tracebacks run to pages)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:600]


def elf_arch(lib: Path) -> str | None:
    """The CPU architecture an ELF shared library was built for (None: not ELF or unknown)."""
    machine = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv64"}
    with open(lib, "rb") as f:
        head = f.read(20)
    return machine.get(int.from_bytes(head[18:20], "little")) if head[:4] == b"\x7fELF" else None


def _check_arch(lib: Path) -> None:
    """A library for another architecture cannot be loaded here: say so instead of a dlopen error."""
    from chipfit.hardware.cross import host_arch

    arch = elf_arch(lib)
    if arch and arch != host_arch():
        raise ValueError(
            f"tvm backend: '{lib.name}' was compiled for {arch} and this machine is {host_arch()}; "
            f"run it on the {arch} target (copy the artifact folder there)"
        )


def run_module(
    lib: Path, feeds: Mapping[str, np.ndarray], order: list[str], timeout_s: float = 600
) -> list[np.ndarray]:
    """Run a compiled module in a separate Python — under qemu-user with the target's sysroot when the library
    is for another architecture — and return its outputs."""
    import subprocess
    import sys
    import tempfile

    from chipfit.hardware.cross import SYSROOT_PYTHON, host_arch, toolchain

    chain = toolchain(elf_arch(lib) or host_arch())
    script = Path(__file__).with_name("_tvm_check.py")
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in feeds.items()}
        np.savez(inputs, __order__=np.array(order), **arrays)
        if chain.native:
            cmd = [sys.executable, "-P", str(script), str(lib), str(inputs), str(outputs)]  # -P: not beside tvm.py
            env = dict(os.environ)
        else:
            why = chain.check_unavailable()
            if why:
                raise RuntimeError(why)
            if not (chain.qemu and chain.sysroot):  # check_unavailable() said both are there
                raise RuntimeError(f"no qemu-{chain.arch} or sysroot to run the module")
            root = str(chain.sysroot)
            cmd = [chain.qemu, "-L", root, f"{root}/usr/bin/{SYSROOT_PYTHON}", "-P", str(script), str(lib), str(inputs)]
            cmd.append(str(outputs))
            env = {"PYTHONPATH": "/opt/chipfit-py", "PATH": os.environ.get("PATH", ""), "TVM_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the module failed to run ({' '.join(cmd[:1])}): {proc.stderr.strip()[-600:]}")
        data = np.load(outputs)
        return [data[f"arr_{i}"] for i in range(len(data.files))]


backend = TvmBackend()
