"""OpenVINO (``pip install 'chipfit[openvino]'``): reads the ONNX model directly and compiles it for the CPU,
with its performance hints as options — LATENCY (one stream, all cores on one request) or THROUGHPUT
(several streams) — and the inference precision (f32; bf16 where the CPU has native bf16). openvino is
imported in this module only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.backends.base import Capabilities, OptionSet

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["OpenVinoBackend", "backend"]

INSTALL = "pip install 'chipfit[openvino]'"
HINTS = ("LATENCY", "THROUGHPUT")


def _core() -> Any:
    import openvino as ov

    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE: Any = None


class OvExecutable:
    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(dict(feeds))
        return [np.array(result[o]) for o in self._compiled.outputs]

    def close(self) -> None:
        self._request = self._compiled = None


class OpenVinoBackend:
    name = "openvino"
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "int8"), dynamic_shapes=True)

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
        core = _core()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": str(options.get("hint", "LATENCY")).upper(),
            "INFERENCE_PRECISION_HINT": str(options.get("precision", "f32")),
        }
        if "threads" in options:
            config["INFERENCE_NUM_THREADS"] = int(options["threads"])
        model = core.read_model(str(model_path))  # raises naming any operator it cannot convert
        return OvExecutable(core.compile_model(model, "CPU", config))

    def option_space(self, model: Model, cpus: int) -> OptionSet:
        """The model as given (OpenVINO applies its own graph transformations) and the int8 variants the ORT
        passes produce (OpenVINO runs QDQ graphs with int8 kernels) × performance hint × precision."""
        from chipfit.hardware.detect import cpu_features

        variants: list[list[dict[str, Any]]] = [[]]
        from chipfit.passes.int8_static import pass_ as static

        if static.quantizable(model.path):
            variants.append([{"name": "int8_static", "params": {"calibrate": "minmax", "per_channel": True}}])
        options: list[dict[str, Any]] = [{"hint": h, "precision": "f32", "threads": cpus} for h in HINTS]
        skip: dict[int, str] = {}
        options.append({"hint": "LATENCY", "precision": "bf16", "threads": cpus})
        if not cpu_features().get("bf16", False):
            skip[len(options) - 1] = "bf16: this CPU has no native bf16 (AVX512-BF16/AMX); OpenVINO would emulate it"
        return OptionSet(variants=variants, options=options, reference_options=None, option_skip=skip)


backend = OpenVinoBackend()
