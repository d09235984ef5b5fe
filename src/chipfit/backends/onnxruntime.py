"""ONNX Runtime: the CPU provider, and the CUDA and TensorRT providers (fp16, int8 from QDQ graphs) when
onnxruntime-gpu and an NVIDIA GPU are present (listed with the reason otherwise). onnxruntime is imported
here, in passes that use ONNX Runtime's own tools, and nowhere else."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["LEVELS", "OnnxRuntimeBackend", "backend", "precision_variants", "thread_choices"]

LEVELS = ("disable", "basic", "extended", "all")
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
GPU_INSTALL = (
    "pip uninstall -y onnxruntime && pip install onnxruntime-gpu, which replaces it (on a machine with an NVIDIA "
    "GPU and its driver; README: GPUs)"
)


def gpu_targets() -> list[str]:
    """The GPU execution providers this onnxruntime build offers and a GPU to run them ("cuda", "tensorrt")."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    if not _nvidia_gpus():
        return []
    return [t for t in ("cuda", "tensorrt") if _PROVIDERS[t] in have]


@functools.cache
def _nvidia_gpus() -> list[str]:
    """GPUs nvidia-smi lists (asked once per process: capabilities and devices() both need it)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _providers(target: str, options: Mapping[str, Any], model_path: Path) -> list[Any]:
    if target == "cuda":
        return [("CUDAExecutionProvider", {"device_id": int(options.get("device_id", 0))}), "CPUExecutionProvider"]
    if target == "tensorrt":
        from chipfit.workspace import subdir

        trt = {
            "device_id": int(options.get("device_id", 0)),
            "trt_fp16_enable": bool(options.get("trt_fp16", False)),
            "trt_int8_enable": _has_qdq(model_path),  # explicit quantization: TensorRT reads the QDQ scales
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(subdir("trt-engines")),
        }
        return [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _has_qdq(model_path: Path) -> bool:
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)


def thread_choices(cpus: int) -> list[int]:
    """1, 2, 4, ... up to the CPU quota, and the quota itself."""
    out, t = [], 1
    while t < cpus:
        out.append(t)
        t *= 2
    return sorted({*out, cpus})


def session_options(options: Mapping[str, Any]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    level = options.get("graph_optimization_level")
    if level is not None:
        from chipfit.passes.ort_graph_opt import graph_optimization_level

        so.graph_optimization_level = graph_optimization_level(level)
    threads = options.get("threads", options.get("intra_op_num_threads"))  # "threads": chipfit's generic key
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if "inter_op_num_threads" in options:
        so.inter_op_num_threads = int(options["inter_op_num_threads"])
    if options.get("execution_mode") == "parallel":
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    elif options.get("execution_mode") == "sequential":
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if options.get("denormal_as_zero"):  # flush denormals in the intra-op pool's threads (softmax tails)
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if options.get("allow_spinning") is False:  # a server: idle pool threads must not spin on shared cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class OrtExecutable:
    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(None, dict(feeds)))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend:
    name = "onnxruntime"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(devices=("cpu", *gpu_targets()), dtypes=("float32", "float16", "int8"), dynamic_shapes=True)

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed: pip install onnxruntime"
        return None

    def version(self) -> str | None:
        import onnxruntime

        return str(onnxruntime.__version__)

    def devices(self) -> list[str]:
        gpus = _nvidia_gpus() if gpu_targets() else []
        return ["cpu", *[f"cuda:{g.replace(', ', ' ', 1)}" for g in gpus]]

    def initialize(self) -> None:
        """Create ONNX Runtime's process-wide environment with a one-node session, so that memory measured
        afterwards belongs to the model, not to the runtime's first start."""
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "init",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def compile(self, model_path: Path, target: str, options: Mapping[str, Any]) -> OrtExecutable:
        import onnxruntime as ort

        supported = ["cpu", *gpu_targets()]
        if target not in supported:
            raise ValueError(
                f"onnxruntime backend: target '{target}' is not supported here (supported: {', '.join(supported)})"
            )
        providers = _providers(target, options, model_path)
        session = ort.InferenceSession(str(model_path), session_options(options), providers=providers)
        if _PROVIDERS[target] not in session.get_providers():  # ORT falls back to the CPU silently
            raise RuntimeError(
                f"onnxruntime could not start {_PROVIDERS[target]} (it fell back to {session.get_providers()}); "
                "check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs"
            )
        return OrtExecutable(session)

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """Graph variants × threads × execution mode; the first option (all cores, sequential) is the default.
        Transformers run with denormals flushed to zero (``denormal_as_zero``), the plain session swept last."""
        variants, skip = precision_variants(model.path)
        options = []
        for threads in sorted(thread_choices(cpus), key=lambda t: -t):
            for mode in ("sequential", "parallel"):
                opt: dict[str, Any] = {
                    "graph_optimization_level": "disable",  # variants are optimized offline
                    "intra_op_num_threads": threads,
                    "execution_mode": mode,
                }
                if mode == "parallel":
                    opt["inter_op_num_threads"] = max(1, cpus // threads)
                options.append(opt)
        from chipfit.passes.transformer_fusion import is_transformer

        if is_transformer(model.path):
            # attention probabilities reach denormal floats, which x86 cores process ~100× slower; with the
            # pool's threads flushing them int8 MiniLM ran 2.27× ONNX Runtime's default fp32 instead of 1.84×
            # (CPU time, 2 threads). Every variant runs with it; the plain default stays as a swept option.
            plain = options[0]
            options = [{**o, "denormal_as_zero": True} for o in options] + [plain]
        gpu: list[dict[str, Any]] = [
            {"device": "cuda"},
            {"device": "tensorrt", "trt_fp16": False},
            {"device": "tensorrt", "trt_fp16": True},
        ]
        have = gpu_targets()
        usable = [o for o in gpu if o["device"] in have]
        missing = [o for o in gpu if o["device"] not in have]
        # GPU providers, when present, are measured for every variant; otherwise listed once with the reason
        options = options[:1] + usable + options[1:] + missing
        why = f"no NVIDIA GPU with this execution provider here: {GPU_INSTALL}"
        option_skip = {len(options) - len(missing) + i: f"{o['device']}: {why}" for i, o in enumerate(missing)}
        return OptionSet(
            variants=variants,
            options=options,
            reference_options={},
            skip=skip,
            option_skip=option_skip,
            primary=1 + len(usable),
        )


def precision_variants(path: Path) -> tuple[list[list[dict[str, Any]]], dict[int, str]]:
    """The pass chains worth trying on this model and CPU, fp32 first (so the latency probe has a bar to beat).

    fp32: as given, and ONNX Runtime's levels applied offline; transformers also get the transformer fusion,
    and their int8 variants are quantized both after it and without it. int8: dynamic (per-tensor /
    per-channel weights), static
    QDQ (MinMax / Entropy / Percentile calibration); weights in reduced range when the CPU lacks an int8
    dot-product instruction. fp16: listed, but skipped on CPUs without fast fp16 arithmetic.
    """
    from chipfit.hardware.detect import cpu_features
    from chipfit.passes.fp16 import has_float
    from chipfit.passes.int8_dynamic import pass_ as dynamic
    from chipfit.passes.int8_static import pass_ as static
    from chipfit.passes.transformer_fusion import is_transformer

    def opt(level: str) -> dict[str, Any]:
        return {"name": "ort_graph_opt", "params": {"level": level}}

    features = cpu_features()
    variants: list[list[dict[str, Any]]] = [[]] + [[opt(lvl)] for lvl in LEVELS[1:]]
    transformer = is_transformer(path)
    prefix = [{"name": "transformer_fusion", "params": {}}] if transformer else []
    if transformer:
        variants.append([*prefix, opt("all")])
    # transformers: int8 both after the fusion (QAttention) and without it (every MatMul, Gather and the
    # embedding quantized on their own: what Optimum's avx512_vnni config does, often the better trade-off)
    prefixes = [prefix, []] if transformer else [prefix]
    if dynamic.quantizable(path):
        for pre in prefixes:
            for pc in (False, True):
                rr = not features["int8_dot"]  # 7-bit weights only where u8·s8 would saturate (no VNNI/AMX)
                step = {"name": "int8_dynamic", "params": {"per_channel": pc, "reduce_range": rr}}
                variants.append([*pre, step, opt("all")])
    if static.quantizable(path):
        methods = ("minmax", "percentile") if transformer else ("minmax", "entropy", "percentile")
        for pre in prefixes:
            for method in methods if pre == prefix else methods[:1]:
                for pc in (False,) if transformer else (False, True):
                    params: dict[str, Any] = {"calibrate": method, "per_channel": pc}
                    if transformer:  # U8S8: x86 CPU kernels run S8S8 QDQ MatMuls slower than fp32
                        params["activation_type"] = "uint8"
                    step = {"name": "int8_static", "params": params}
                    variants.append([*pre, step, opt("all")])
    skip: dict[int, str] = {}
    if has_float(path):
        variants.append([*prefix, {"name": "fp16", "params": {"keep_io_types": True}}, opt("all")])
        if not features["fast_fp16"]:
            skip[len(variants) - 1] = (
                "fp16: this CPU has no fast fp16 arithmetic (no AVX512-FP16/AMX-FP16 or Arm FP16); ONNX Runtime "
                "would cast back to fp32. Ask for it with --passes fp16 to measure it anyway."
            )
    return variants, skip


backend = OnnxRuntimeBackend()
