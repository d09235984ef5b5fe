"""The conformance kit's reference models: built with ``onnx.helper`` from seeded numpy weights, with their
expected outputs computed independently in numpy (not by any backend), plus the same models as torch
modules for backends that run a torch program instead of ONNX.

Each model has a symbolic batch dimension ``N``: an MLP, a small CNN (Conv, Relu, MaxPool, global average
pool, Gemm), a transformer block (single-head attention, residual, LayerNormalization, GELU feed-forward),
and a model with an operator no backend implements (``chipfit.test::NoSuchOp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "UNSUPPORTED_OP",
    "ReferenceModel",
    "int8_mlp",
    "onnx_model",
    "random_weights",
    "reference_models",
    "save_torch_program",
    "torch_module",
    "unsupported_model",
]

UNSUPPORTED_OP = "NoSuchOp"
OPSET = 17


@dataclass
class ReferenceModel:
    name: str
    proto: onnx.ModelProto
    input_shape: tuple[int, ...]  # per sample (without the batch dimension)
    expected: Callable[[np.ndarray], np.ndarray]  # numpy reference
    weights: dict[str, np.ndarray]
    kind: str  # "mlp", "cnn", "transformer"

    def inputs(self, batch: int, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, *self.input_shape)).astype(np.float32)

    def save(self, folder: Path) -> Path:
        path = folder / f"{self.name}.onnx"
        onnx.save_model(self.proto, str(path))
        return path


def onnx_model(nodes: list[Any], name: str, in_shape: list[Any], out_shape: list[Any], weights: dict) -> Any:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chipfit.testing")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def random_weights(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    s = scale if scale is not None else 1.0 / math.sqrt(shape[0] if len(shape) == 2 else int(np.prod(shape[1:])))
    return (rng.standard_normal(shape) * s).astype(np.float32)


def mlp(seed: int = 0) -> ReferenceModel:
    rng = np.random.default_rng(seed)
    w = {
        "W1": random_weights(rng, 32, 64),
        "b1": random_weights(rng, 64, scale=0.1),
        "W2": random_weights(rng, 64, 10),
        "b2": random_weights(rng, 10, scale=0.1),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["y"]),
    ]

    def expected(x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"]

    return ReferenceModel("mlp", onnx_model(nodes, "mlp", ["N", 32], ["N", 10], w), (32,), expected, w, "mlp")


def _conv3x3(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3×3 convolution, stride 1, padding 1 (NCHW), by shifted sums."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, k.shape[0], h, wd), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], k[:, :, i, j])
    return (out + b[None, :, None, None]).astype(np.float32)


def cnn(seed: int = 0) -> ReferenceModel:
    rng = np.random.default_rng(seed)
    w = {
        "K1": random_weights(rng, 8, 3, 3, 3),
        "c1": random_weights(rng, 8, scale=0.1),
        "K2": random_weights(rng, 16, 8, 3, 3),
        "c2": random_weights(rng, 16, scale=0.1),
        "Wf": random_weights(rng, 16, 10),
        "bf": random_weights(rng, 10, scale=0.1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "K1", "c1"], ["a1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "K2", "c2"], ["a2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"]),
    ]

    def expected(x: np.ndarray) -> np.ndarray:
        r1 = np.maximum(_conv3x3(x, w["K1"], w["c1"]), 0)
        n, c, h, wd = r1.shape
        p1 = r1.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        r2 = np.maximum(_conv3x3(p1, w["K2"], w["c2"]), 0)
        return r2.mean(axis=(2, 3)) @ w["Wf"] + w["bf"]

    proto = onnx_model(nodes, "cnn", ["N", 3, 16, 16], ["N", 10], w)
    return ReferenceModel("cnn", proto, (3, 16, 16), expected, w, "cnn")


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def transformer_block(seed: int = 0, seq: int = 8, d: int = 32, ff: int = 64) -> ReferenceModel:
    rng = np.random.default_rng(seed)
    w = {k: random_weights(rng, d, d) for k in ("Wq", "Wk", "Wv", "Wo")}
    w |= {
        "W1": random_weights(rng, d, ff),
        "W2": random_weights(rng, ff, d),
        "g1": np.ones(d, np.float32),
        "be1": np.zeros(d, np.float32),
    }
    w |= {"g2": (1 + random_weights(rng, d, scale=0.1)), "be2": random_weights(rng, d, scale=0.1)}
    w |= {"scale": np.array(1 / math.sqrt(d), np.float32), "half": np.array(0.5, np.float32)}
    w |= {"one": np.array(1.0, np.float32), "rsqrt2": np.array(1 / math.sqrt(2), np.float32)}
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "Wq"], ["q"]),
        n("MatMul", ["x", "Wk"], ["k"]),
        n("MatMul", ["x", "Wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s"]),
        n("Softmax", ["s"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["att"]),
        n("MatMul", ["att", "Wo"], ["o"]),
        n("Add", ["x", "o"], ["r1"]),
        n("LayerNormalization", ["r1", "g1", "be1"], ["h"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h", "W1"], ["f0"]),
        n("Mul", ["f0", "rsqrt2"], ["e0"]),  # GELU(x) = 0.5 x (1 + erf(x / sqrt 2))
        n("Erf", ["e0"], ["e1"]),
        n("Add", ["e1", "one"], ["e2"]),
        n("Mul", ["f0", "e2"], ["e3"]),
        n("Mul", ["e3", "half"], ["f1"]),
        n("MatMul", ["f1", "W2"], ["f2"]),
        n("Add", ["h", "f2"], ["r2"]),
        n("LayerNormalization", ["r2", "g2", "be2"], ["y"], axis=-1, epsilon=1e-5),
    ]

    def expected(x: np.ndarray) -> np.ndarray:
        from math import erf

        q, k, v = x @ w["Wq"], x @ w["Wk"], x @ w["Wv"]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        h = _layer_norm(x + (p @ v) @ w["Wo"], w["g1"], w["be1"])
        f0 = h @ w["W1"]
        f1 = 0.5 * f0 * (1 + np.vectorize(erf)(f0 / math.sqrt(2)))
        return _layer_norm(h + f1 @ w["W2"], w["g2"], w["be2"]).astype(np.float32)

    proto = onnx_model(nodes, "transformer", ["N", seq, d], ["N", seq, d], w)
    return ReferenceModel("transformer", proto, (seq, d), expected, w, "transformer")


def reference_models() -> list[ReferenceModel]:
    return [mlp(), cnn(), transformer_block()]


def unsupported_model() -> onnx.ModelProto:
    """One operator from a domain no backend implements, between two ordinary ones."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node(UNSUPPORTED_OP, ["a"], ["b"], domain="chipfit.test"),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("chipfit.test", 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    return proto


def torch_module(ref: ReferenceModel) -> Any:
    """The same model as a torch.nn.Module with the same weights (for backends that run a torch program)."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(np.array(v)) for k, v in ref.weights.items()}

    class Reference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for k, v in w.items():
                self.register_buffer(f"w_{k}", v)

        def forward(self, x: Any) -> Any:
            b: Any = _Weights(self)
            if ref.kind == "mlp":
                return F.relu(x @ b.W1 + b.b1) @ b.W2 + b.b2
            if ref.kind == "cnn":
                r = F.max_pool2d(F.relu(F.conv2d(x, b.K1, b.c1, padding=1)), 2)
                r = F.relu(F.conv2d(r, b.K2, b.c2, padding=1))
                return r.mean(dim=(2, 3)) @ b.Wf + b.bf
            q, k, v = x @ b.Wq, x @ b.Wk, x @ b.Wv
            p = torch.softmax(q @ k.transpose(1, 2) * b.scale, dim=-1)
            h = F.layer_norm(x + (p @ v) @ b.Wo, (x.shape[-1],), b.g1, b.be1, 1e-5)
            f = F.gelu(h @ b.W1) @ b.W2
            return F.layer_norm(h + f, (x.shape[-1],), b.g2, b.be2, 1e-5)

    class _Weights:
        def __init__(self, m: Any) -> None:
            self.m = m

        def __getattr__(self, k: str) -> Any:
            return getattr(self.m, f"w_{k}")

    return Reference().eval()


def save_torch_program(ref: ReferenceModel, path: Path) -> Path:
    """``torch.export`` the reference model with a dynamic batch dimension and save it (``.pt2``)."""
    import torch

    module = torch_module(ref)
    batch = torch.export.Dim("batch", min=1, max=1024)
    x = torch.from_numpy(ref.inputs(2))
    ep = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


def int8_mlp(seed: int = 0) -> ReferenceModel:
    """A quantized (QDQ) layer: int8 activations and weights, as ONNX Runtime's static quantizer writes it."""
    rng = np.random.default_rng(seed)
    wf = random_weights(rng, 32, 10)
    sw = np.float32(np.abs(wf).max() / 127)
    w: dict[str, np.ndarray] = {
        "Wq": np.clip(np.round(wf / sw), -127, 127).astype(np.int8),
        "sw": np.array(sw, np.float32),
        "sx": np.array(4.0 / 127, np.float32),
        "zx": np.array(0, np.int8),
        "b": random_weights(rng, 10, scale=0.1),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "sw"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]

    def expected(x: np.ndarray) -> np.ndarray:
        xd = np.clip(np.rint(x / w["sx"]), -128, 127) * w["sx"]
        return (xd @ (w["Wq"].astype(np.float32) * w["sw"]) + w["b"]).astype(np.float32)

    proto = onnx_model(nodes, "int8_mlp", ["N", 32], ["N", 10], w)
    return ReferenceModel("int8_mlp", proto, (32,), expected, w, "mlp")
