"""Micro-benchmarks for the kernel-level predictor: seed models (MLPs, CNNs, BERT-like encoders) of sampled
sizes, batch and precision are built and optimized by ONNX Runtime as a candidate would be; each kernel's own
time comes from ONNX Runtime's profiler over repeated runs of the seed model (every kernel in turn within each
run, so the repeats are interleaved, with the caches and thread pool as in a real model), and the whole seed
model and an empty call (the per-call overhead) are timed interleaved, at each thread count.

The seeds are drawn around the shapes real models have (widths, channels, sequence lengths, batch 1–32);
:func:`neighbours` draws new seeds near those whose kernels the predictor got most wrong (adaptive sampling).
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipfit.predict.kernels import Kernel, kernels_of

__all__ = ["Seed", "build_seed", "initial_seeds", "measure_seed", "neighbours", "variant_kernels"]

BATCHES = (1, 2, 4, 8, 16, 32)
VARIANTS = {
    "mlp": ("fp32", "basic", "int8"),
    "cnn": ("fp32", "basic", "int8"),
    "encoder": ("fused", "fused_int8", "int8", "fp32", "basic"),
}


@dataclass(frozen=True)
class Seed:
    family: str  # mlp, cnn, encoder
    dims: tuple[int, ...]  # mlp: widths; cnn: (cin, size, c1, c2, c3); encoder: (layers, hidden, heads, seq)
    batch: int
    variant: str  # fp32 (level all), basic (level basic), int8 (dynamic, all), fused, fused_int8

    @property
    def id(self) -> str:
        return f"{self.family}-{'x'.join(map(str, self.dims))}-b{self.batch}-{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlp(widths: tuple[int, ...], rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits += [
            numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
            numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        x = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    return _model(nodes, inits, ["N", widths[0]], ["N", widths[-1]])


def _cnn(dims: tuple[int, ...], rng: np.random.Generator) -> onnx.ModelProto:
    cin, size, *chans = dims
    nodes, inits, x, c = [], [], "x", cin
    for i, co in enumerate(chans):
        k = 3 if i % 2 == 0 else 1
        inits += [
            numpy_helper.from_array(
                (rng.standard_normal((co, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32), f"K{i}"
            ),
            numpy_helper.from_array((rng.standard_normal(co) * 0.1).astype(np.float32), f"c{i}"),
        ]
        pads = [k // 2] * 4
        nodes += [
            helper.make_node("Conv", [x, f"K{i}", f"c{i}"], [f"v{i}"], kernel_shape=[k, k], pads=pads),
            helper.make_node("Relu", [f"v{i}"], [f"r{i}"]),
        ]
        x, c = f"r{i}", co
        if i == 0:
            nodes.append(helper.make_node("MaxPool", [x], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
            x = "p"
    inits += [
        numpy_helper.from_array((rng.standard_normal((c, 10)) / np.sqrt(c)).astype(np.float32), "Wf"),
        numpy_helper.from_array(np.zeros(10, np.float32), "bf"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"]),
    ]
    return _model(nodes, inits, ["N", cin, size, size], ["N", 10])


def _model(nodes: list[Any], inits: list[Any], in_shape: list[Any], out_shape: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "seed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _base(seed: Seed, folder: Path) -> Path:
    """The seed's fp32 model (shared by its variants and batches)."""
    path = folder / f"{seed.family}-{'x'.join(map(str, seed.dims))}.onnx"
    if path.exists():
        return path
    rng = np.random.default_rng(abs(hash(seed.dims)) % 2**32)
    if seed.family == "encoder":
        from chipfit.testing.models import bert_inputs, bert_like, export_onnx

        layers, hidden, heads, seq = seed.dims
        module = bert_like(layers=layers, hidden=hidden, heads=heads, seq=seq, vocab=1000)
        export_onnx(module, bert_inputs(1, seq=seq), path)
    else:
        onnx.save(_mlp(seed.dims, rng) if seed.family == "mlp" else _cnn(seed.dims, rng), path)
    return path


def build_seed(seed: Seed, folder: Path, int8_reduce_range: bool) -> tuple[Path, str, dict[str, np.ndarray]]:
    """(the variant's model file, the session optimization level, the feeds at the seed's batch)."""
    from chipfit.passes import get_pass
    from chipfit.passes.base import PassContext

    base = _base(seed, folder)
    names = ["input_ids", "attention_mask"] if seed.family == "encoder" else ["x"]
    ctx = PassContext(None, None, names)
    steps: list[tuple[str, dict[str, Any]]] = []
    if seed.variant.startswith("fused"):
        steps.append(("transformer_fusion", {}))
    if seed.variant.endswith("int8"):
        steps.append(("int8_dynamic", {"per_channel": True, "reduce_range": int8_reduce_range}))
    path = base
    for i, (name, params) in enumerate(steps):
        dst = folder / f"{base.stem}-{seed.variant}-{i}.onnx"
        if not dst.exists():
            get_pass(name).apply(path, dst, params, ctx)
        path = dst if dst.exists() else path  # a pass that does not apply (no MatMul to quantize) writes nothing
    rng = np.random.default_rng(0)
    if seed.family == "encoder":
        seq = seed.dims[3]
        feeds = {
            "input_ids": rng.integers(0, 1000, (seed.batch, seq)).astype(np.int64),
            "attention_mask": np.ones((seed.batch, seq), np.int64),
        }
    elif seed.family == "mlp":
        feeds = {"x": rng.standard_normal((seed.batch, seed.dims[0])).astype(np.float32)}
    else:
        feeds = {"x": rng.standard_normal((seed.batch, seed.dims[0], seed.dims[1], seed.dims[1])).astype(np.float32)}
    return path, "basic" if seed.variant == "basic" else "all", feeds


def variant_kernels(
    model_path: Path, level: str | None, feeds: dict[str, np.ndarray]
) -> tuple[list[tuple[Kernel, onnx.NodeProto]], onnx.ModelProto, dict[str, np.ndarray], bytes]:
    """The kernels ONNX Runtime runs for ``model_path`` at session ``level`` on ``feeds``, the optimized graph
    (nodes renamed ``k0``, ``k1``, ... so the profiler's events name them uniquely), the run's tensor values,
    and that graph serialized (to time and profile it whole)."""
    from chipfit.passes.kernel_graph import capture, optimized_graph

    with tempfile.TemporaryDirectory() as tmp:
        opt = optimized_graph(model_path, level, Path(tmp) / "opt.onnx")
        proto, values = capture(opt, feeds)
    for i, node in enumerate(proto.graph.node):
        node.name = f"k{i}"
    return kernels_of(proto, values), proto, values, proto.SerializeToString()


def _identity() -> tuple[bytes, dict[str, np.ndarray]]:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), {"x": np.zeros(1, np.float32)}


def _trimmed_mean(ts: list[float], cut: float = 0.05) -> float:
    """The mean with the top ``cut`` share left out. The mean, not the median: a run's time is the sum of its
    kernels' times, so on a shared machine the preemptions a kernel suffers belong to it in proportion (the
    median of each kernel would leave them all out, and sum to less than a run's median)."""
    s = np.sort(np.asarray(ts))
    keep = s[: max(1, math.ceil(len(s) * (1 - cut)))]
    return float(keep.mean())


def _block_cv(ts: list[float], blocks: int = 5) -> float:
    """CV of the medians of ``blocks`` consecutive runs: the noise floor of a kernel's median."""
    parts = [p for p in np.array_split(np.asarray(ts), min(blocks, len(ts))) if len(p)]
    meds = np.array([float(np.median(p)) for p in parts])
    return float(meds.std() / meds.mean()) if len(meds) > 1 and meds.mean() > 0 else 0.0


def measure_seed(seed: Seed, folder: Path, threads: list[int], int8_reduce_range: bool) -> dict[str, Any]:
    """Profile ``seed``'s kernels (their own times) and time the whole seed model and an empty call interleaved,
    at each thread count. Returns kernels (dicts by signature), kernel rows, model rows, overhead rows and what
    could not run."""
    from chipfit.passes.kernel_graph import profile_nodes, time_sessions

    path, level, feeds = build_seed(seed, folder, int8_reduce_range)
    ks, _, _, whole = variant_kernels(path, level, feeds)
    counts: dict[str, int] = {}
    out: dict[str, Any] = {"kernels": {}, "kernel_rows": [], "model_rows": [], "overhead": [], "failed": []}
    for k, _ in ks:
        counts[k.signature] = counts.get(k.signature, 0) + 1
        out["kernels"][k.signature] = k.to_dict()
    for t in threads:
        timed = time_sessions([(whole, feeds), _identity()], t)
        if isinstance(timed[0], str):
            out["failed"].append(f"{seed.id} (whole model): {timed[0]}")
            continue
        if not isinstance(timed[1], str):
            out["overhead"].append({"threads": t, "ms": timed[1][0]})
        prof = profile_nodes(whole, feeds, t)
        by_sig: dict[str, list[float]] = {}
        for k, node in ks:
            by_sig.setdefault(k.signature, []).extend(prof.get(node.name, []))
        for sig, ts in by_sig.items():
            if ts:
                row = {"sig": sig, "threads": t, "ms": _trimmed_mean(ts), "cv": _block_cv(ts), "seed": seed.id}
                out["kernel_rows"].append(row)
        out["model_rows"].append(
            {
                "seed": seed.id,
                "threads": t,
                "ms": timed[0][0],
                "cv": timed[0][1],
                "kernels": [[sig, c] for sig, c in counts.items()],
            }
        )
    return out


def _snap(v: float, lo: int, hi: int, step: int = 8) -> int:
    return int(min(hi, max(lo, round(v / step) * step)))


def initial_seeds(rng: np.random.Generator, encoders: bool) -> list[Seed]:
    """A varied first round, cheap families first (a short calibration still covers MLPs and CNNs)."""
    out: list[Seed] = []
    for i in range(6):
        widths = tuple(int(w) for w in rng.choice([32, 64, 128, 256, 384, 512, 768, 1024, 2048], size=2 + i % 3))
        out.append(Seed("mlp", (*widths, 10), int(rng.choice(BATCHES)), VARIANTS["mlp"][i % 3]))
    for i in range(4):
        chans = tuple(int(c) for c in rng.choice([8, 16, 32, 64, 128], size=3))
        out.append(
            Seed(
                "cnn",
                (3, int(rng.choice([16, 28, 32, 56])), *chans),
                int(rng.choice(BATCHES[:4])),
                VARIANTS["cnn"][i % 3],
            )
        )
    if encoders:
        for i, (hidden, heads) in enumerate([(128, 4), (256, 4), (384, 12), (192, 6), (512, 8)]):
            seq = int(rng.choice([16, 32, 64, 128]))
            batch = int(rng.choice(BATCHES[:4] if seq >= 64 else BATCHES))
            out.append(Seed("encoder", (2, hidden, heads, seq), batch, VARIANTS["encoder"][i % 5]))
    return out


def neighbours(seed: Seed, rng: np.random.Generator) -> Seed:
    """A seed near ``seed``: each size ×0.5–1.5 (snapped), another batch or variant of the same family."""
    scale = lambda v, lo, hi: _snap(v * rng.uniform(0.5, 1.5), lo, hi)  # noqa: E731
    if seed.family == "mlp":
        dims: tuple[int, ...] = (*(scale(w, 8, 4096) for w in seed.dims[:-1]), seed.dims[-1])
    elif seed.family == "cnn":
        dims = (seed.dims[0], scale(seed.dims[1], 8, 64), *(scale(c, 8, 256) for c in seed.dims[2:]))
    else:
        layers, hidden, heads, _ = seed.dims
        hidden = _snap(hidden * rng.uniform(0.6, 1.5), heads * 8, 768, heads * 8)
        dims = (layers, hidden, heads, int(rng.choice([16, 32, 64, 128])))
    batch = int(rng.choice(BATCHES)) if rng.random() < 0.5 else seed.batch
    if seed.family == "encoder" and dims[3] * batch > 2048:
        batch = max(1, 2048 // dims[3])
    keep = 0.3 if seed.family == "encoder" else 0.7  # encoders: five variants, each with its own kernels
    variant = seed.variant if rng.random() < keep else str(rng.choice(VARIANTS[seed.family]))
    return Seed(seed.family, dims, batch, variant)


def seed_from(d: dict[str, Any]) -> Seed:
    return Seed(str(d["family"]), tuple(int(x) for x in d["dims"]), int(d["batch"]), str(d["variant"]))


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


ProgressFn = Callable[[str], None]
