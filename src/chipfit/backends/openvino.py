"""OpenVINO (``pip install 'chipfit[openvino]'``): reads the ONNX model directly and compiles it for the CPU.

Variants: the model as given (OpenVINO applies its own graph transformations), and int8 QDQ models — NNCF's
(OpenVINO's own quantizer, pass ``nncf_int8``) and ONNX Runtime's static QDQ (``int8_static``) — which
OpenVINO runs with int8 kernels. Options: the inference precision — f32, and bf16 where the CPU has native
bf16 (AVX512-BF16 or AMX; both chipfit's CPU detection and OpenVINO's capabilities must say so), measured for
every variant — and the performance hint: LATENCY (one stream, all cores on one request) or THROUGHPUT
(several streams), swept for the fastest variants.

On a bf16 CPU OpenVINO's default already runs f32 models in bf16, so the f32 option sets
``INFERENCE_PRECISION_HINT=f32`` explicitly; the compiled model's precision is read back and a mismatch fails
the candidate. openvino is imported in this module only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    import onnx

    from chipfit.model import Model

__all__ = ["OpenVinoBackend", "backend", "bypass_constant_qdq", "native_bf16"]

INSTALL = "pip install 'chipfit[openvino]'"
HINTS = ("LATENCY", "THROUGHPUT")
_KERNELS = ("FullyConnected", "MatMul", "Convolution", "Deconvolution")  # exec-graph layers of the compute ops


def _core() -> Any:
    import openvino as ov

    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE: Any = None


def native_bf16() -> str | None:
    """None when this CPU runs bf16 natively (chipfit's CPU detection and OpenVINO's capabilities agree), else why
    not. OpenVINO emulates bf16 (slowly) on AVX-512 CPUs without it and refuses it on others."""
    from chipfit.hardware.detect import cpu_features

    if not cpu_features().get("bf16", False):
        return "bf16: this CPU has no native bf16 (AVX512-BF16/AMX); OpenVINO would emulate it"
    caps = [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" not in caps:
        return f"bf16: OpenVINO's CPU plugin does not list BF16 in its capabilities ({', '.join(caps)})"
    return None


class OvExecutable:
    def __init__(self, compiled: Any, notes: list[str]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]
        self.notes = notes

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(dict(feeds))
        return [np.array(result[o]) for o in self._compiled.outputs]

    def close(self) -> None:
        self._request = self._compiled = None


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from initializers and Constants alone (no graph input reaches them)."""
    const = {i.name for i in model.graph.initializer}
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        if n.op_type == "Constant" or (n.input and all(i in const or not i for i in n.input)):
            const.update(n.output)
    return const


def bypass_constant_qdq(model: onnx.ModelProto) -> int:
    """Remove QuantizeLinear → DequantizeLinear pairs on tensors computed from constants; returns how many.

    ONNX Runtime's static quantizer fake-quantizes every float input of Add/Mul, constants included (a shared
    bias the TorchScript exporter reaches through Identity, the position embeddings, the attention's scale).
    OpenVINO folds such a pair into a plain constant, and its low-precision AddTransformation and
    MultiplyPartialTransformation then fail with "Check 'index < m_inputs.size()' failed" on that Add or Mul
    (OpenVINO 2026.4). The float constant is what the pair approximates; weights (DequantizeLinear of an int8
    initializer, no QuantizeLinear) are kept."""
    const = _constant_tensors(model)
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    pairs = 0
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in const or q.output[0] in graph_outputs:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in graph_outputs for d in dqs):
            continue
        rename.update({d.output[0]: q.input[0] for d in dqs})
        drop.update(id(d) for d in [q, *dqs])
        pairs += 1
    if not pairs:
        return 0
    kept = [n for n in model.graph.node if id(n) not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return pairs


def _read(model_path: Path) -> tuple[Any, list[str]]:
    """The model as OpenVINO reads it; a QDQ model held in memory (weights in the file: no external data) without
    its pairs on constants."""
    import onnx

    from chipfit.onnx_files import onnx_files

    core = _core()
    graph = onnx.load(str(model_path), load_external_data=False)
    if len(onnx_files(model_path)) > 1 or not any(n.op_type == "QuantizeLinear" for n in graph.graph.node):
        return core.read_model(str(model_path)), []  # raises naming any operator it cannot convert
    pairs = bypass_constant_qdq(graph)
    if not pairs:
        return core.read_model(str(model_path)), []
    note = (
        f"openvino: {pairs} QuantizeLinear/DequantizeLinear pairs on constants kept in float "
        "(OpenVINO's int8 transformations fail on them)"
    )
    return core.read_model(graph.SerializeToString()), [note]


def _kernel_precisions(compiled: Any) -> str:
    """How the compute kernels run, from the executed graph: e.g. "FullyConnected i8×36, MatMul bf16×12"."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in _KERNELS:
            counts[f"{layer} {info['runtimePrecision'].astype(str)}"] += 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))


class OpenVinoBackend:
    name = "openvino"
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "bfloat16", "int8"), dynamic_shapes=True)

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"openvino is not installed: {INSTALL}"
        return None

    def version(self) -> str | None:
        import openvino as ov

        return str(ov.__version__).split("-")[0]

    def devices(self) -> list[str]:
        core = _core()
        return [f"cpu {core.get_property('CPU', 'FULL_DEVICE_NAME')}"] if "CPU" in core.available_devices else []

    def initialize(self) -> None:
        _core()

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> OvExecutable:
        if target != "cpu":
            raise ValueError(f"openvino backend: target '{target}' is not supported here (supported: cpu)")
        precision = str(options.get("precision", "f32")).lower()
        if precision not in ("f32", "bf16"):
            raise ValueError(f"openvino backend: precision must be 'f32' or 'bf16'; got {precision!r}")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": str(options.get("hint", "LATENCY")).upper(),
            "INFERENCE_PRECISION_HINT": precision,
        }
        if "threads" in options:
            config["INFERENCE_NUM_THREADS"] = int(options["threads"])
        model, notes = _read(model_path)
        compiled = _core().compile_model(model, "CPU", config)
        got = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if got != precision:
            raise RuntimeError(
                f"openvino backend: asked for inference precision {precision}, the compiled model reports {got}"
                + (" (this CPU has no native bf16)" if precision == "bf16" else "")
            )
        kernels = _kernel_precisions(compiled)
        notes.append(f"openvino: inference precision {got} (read back)" + (f"; kernels {kernels}" if kernels else ""))
        return OvExecutable(compiled, notes)

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """The model as given and its int8 QDQ variants × inference precision (f32, and bf16 where native: both
        measured for every variant) × performance hint (THROUGHPUT swept for the fastest)."""
        import importlib.util

        from chipfit.passes.int8_static import pass_ as static
        from chipfit.passes.nncf_int8 import pass_ as nncf_int8
        from chipfit.passes.transformer_fusion import is_transformer

        variants: list[list[dict[str, Any]]] = [[]]
        skip: dict[int, str] = {}
        if nncf_int8.quantizable(model.path):
            if is_transformer(model.path):  # first: the one that keeps a transformer's fidelity
                variants.append([{"name": "nncf_int8", "params": {"preset": "mixed", "keep_sensitive": True}}])
            variants.append([{"name": "nncf_int8", "params": {"preset": "mixed"}}])
            if importlib.util.find_spec("nncf") is None:
                for i in range(1, len(variants)):
                    skip[i] = f"nncf_int8: NNCF is not installed: {INSTALL}"
        if static.quantizable(model.path):
            variants.append([{"name": "int8_static", "params": {"calibrate": "minmax", "per_channel": True}}])
        no_bf16 = native_bf16()
        f32 = [{"hint": h, "precision": "f32", "threads": cpus} for h in HINTS]
        bf16 = [{"hint": h, "precision": "bf16", "threads": cpus} for h in HINTS]
        if no_bf16 is None:  # bf16 with the default hint is measured for every variant, like f32
            options = [f32[0], bf16[0], f32[1], bf16[1]]
            return OptionSet(variants=variants, options=options, skip=skip, primary=2)
        options = [*f32, bf16[0]]
        return OptionSet(variants=variants, options=options, skip=skip, option_skip={len(options) - 1: no_bf16})


backend = OpenVinoBackend()
