"""A family of small real models of varied shape (MLPs, CNNs, transformer blocks) with random inputs, for
training and evaluating the latency predictor: ``corpus(n)`` lists them, ``write(folder)`` saves each as
``<name>.onnx`` + ``<name>.npz``. Sizes span memory-bound and compute-bound cases on a CPU."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from chipfit.testing.reference_models import onnx_model, random_weights, transformer_block

__all__ = ["corpus", "write"]


def _mlp(name: str, widths: list[int], seed: int) -> tuple[str, onnx.ModelProto, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    nodes, x = [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        w[f"W{i}"], w[f"b{i}"] = random_weights(rng, a, b), random_weights(rng, b, scale=0.1)
        nodes += [
            helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        x = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    return name, onnx_model(nodes, name, ["N", widths[0]], ["N", widths[-1]], w), (widths[0],)


def _cnn(name: str, channels: list[int], size: int, seed: int) -> tuple[str, onnx.ModelProto, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    nodes, x = [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(channels)):
        w[f"K{i}"], w[f"c{i}"] = random_weights(rng, b, a, 3, 3), random_weights(rng, b, scale=0.1)
        nodes += [
            helper.make_node("Conv", [x, f"K{i}", f"c{i}"], [f"v{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"v{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
        if i % 2 == 1:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    w["Wf"], w["bf"] = random_weights(rng, channels[-1], 10), random_weights(rng, 10, scale=0.1)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"]),
    ]
    shape = (channels[0], size, size)
    return name, onnx_model(nodes, name, ["N", *shape], ["N", 10], w), shape


def corpus(n: int = 12, seed: int = 0) -> Iterator[tuple[str, onnx.ModelProto, tuple[int, ...]]]:
    """Up to ``n`` models, alternating families so any prefix is varied."""
    specs: list[Any] = [
        lambda s: _mlp("mlp_64x256x10", [64, 256, 10], s),
        lambda s: _cnn("cnn_3x16x32_s32", [3, 16, 32], 32, s),
        lambda s: ("tfm_s16_d64", transformer_block(s, seq=16, d=64, ff=256).proto, (16, 64)),
        lambda s: _mlp("mlp_784x1024x1024x10", [784, 1024, 1024, 10], s),
        lambda s: _cnn("cnn_3x8x16x32_s28", [3, 8, 16, 32], 28, s),
        lambda s: ("tfm_s32_d128", transformer_block(s, seq=32, d=128, ff=512).proto, (32, 128)),
        lambda s: _mlp("mlp_256x2048x256", [256, 2048, 256], s),
        lambda s: _cnn("cnn_3x32x64_s16", [3, 32, 64], 16, s),
        lambda s: ("tfm_s8_d32", transformer_block(s, seq=8, d=32, ff=64).proto, (8, 32)),
        lambda s: _mlp("mlp_32x64x64x64x8", [32, 64, 64, 64, 8], s),
        lambda s: _cnn("cnn_1x16x16x32x32_s28", [1, 16, 16, 32, 32], 28, s),
        lambda s: ("tfm_s64_d64", transformer_block(s, seq=64, d=64, ff=128).proto, (64, 64)),
    ]
    for i, make in enumerate(specs[:n]):
        yield make(seed + i)


def write(folder: Path, n: int = 12, samples: int = 64) -> list[tuple[Path, Path]]:
    """Save the corpus: ``(model.onnx, inputs.npz)`` per model (inputs named ``x``, no labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (name, proto, shape) in enumerate(corpus(n)):
        onnx.save(proto, folder / f"{name}.onnx")
        x = np.random.default_rng(i).standard_normal((samples, *shape)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x)
        out.append((folder / f"{name}.onnx", folder / f"{name}.npz"))
    return out
