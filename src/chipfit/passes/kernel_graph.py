"""The kernels ONNX Runtime runs for a model: the nodes of its optimized graph (fused ops such as FusedMatMul,
Attention, SkipLayerNormalization, DynamicQuantizeMatMul, QLinearConv, NCHWc convolutions) with the tensors
each reads and writes at a given input; each node's own time from ONNX Runtime's profiler, and whole models
timed in interleaved rounds, for the latency predictor's micro-benchmarks.

ONNX's shape inference does not know ONNX Runtime's contrib ops, so shapes come from one run of the optimized
graph with every intermediate tensor exposed as an output. onnxruntime is imported here (passes/ may).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["capture", "optimized_graph", "profile_nodes", "time_sessions"]

LEVEL_NAMES = ("disable", "basic", "extended", "all")


def optimized_graph(model_path: Path, level: str | None, dst: Path) -> Path:
    """Write the graph ONNX Runtime runs for ``model_path`` at session optimization ``level`` (None: ORT's
    default, all) to ``dst``; at ``disable`` the graph is the file as given."""
    import onnxruntime as ort

    from chipfit.passes.ort_graph_opt import graph_optimization_level

    level = level or "all"
    if level not in LEVEL_NAMES:
        raise ValueError(f"kernel graph: optimization level must be one of {LEVEL_NAMES}; got {level!r}")
    if level == "disable":
        return Path(model_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = graph_optimization_level(level)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return dst


def capture(model_path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(the graph, every tensor's value) from one run of ``model_path`` (already optimized: run as given) on
    ``feeds``: inputs, initializers and each node's outputs, by name."""
    import onnxruntime as ort

    proto = onnx.load(str(model_path))
    values: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in feeds.items()}
    for init in proto.graph.initializer:
        values[init.name] = onnx.numpy_helper.to_array(init)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    wanted = [t for n in probe.graph.node for t in n.output if t and t not in known and t not in values]
    for name in dict.fromkeys(wanted):
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for name, value in zip(names, sess.run(names, dict(feeds)), strict=True):
        values[name] = np.asarray(value)
    return proto, values


def time_sessions(
    models: Sequence[tuple[bytes, Mapping[str, np.ndarray]]],
    threads: int,
    rounds: int = 5,
    min_round_s: float = 0.004,
    clock: Callable[[], float] = time.perf_counter,
) -> list[tuple[float, float] | str]:
    """(median ms, coefficient of variation) per serialized model run on its feeds with ``threads`` intra-op
    threads, or the error that stopped it: ``rounds`` interleaved rounds (each model in turn, every round), each
    the median of as many runs as fill ``min_round_s`` (at least 3); the result is the median of the rounds and
    their CV (the noise floor of the measurement)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    live: dict[int, tuple[Any, dict[str, np.ndarray], int]] = {}
    out: list[tuple[float, float] | str] = ["not run"] * len(models)
    for i, (m, f) in enumerate(models):  # warm-up, and how many runs fill a round
        try:
            s = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
            feeds = dict(f)
            t0 = clock()
            s.run(None, feeds)
            s.run(None, feeds)
        except Exception as exc:  # a kernel ONNX Runtime cannot run alone is left out, with its reason
            out[i] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        one = max((clock() - t0) / 2, 1e-6)
        live[i] = (s, feeds, max(3, min(200, int(min_round_s / one))))
    per: dict[int, list[float]] = {i: [] for i in live}
    for _ in range(rounds):
        for i, (s, feeds, reps) in live.items():
            times = []
            for _ in range(reps):
                t0 = clock()
                s.run(None, feeds)
                times.append(clock() - t0)
            per[i].append(statistics.median(times) * 1e3)
    for i, ts in per.items():
        mean = statistics.fmean(ts)
        out[i] = (statistics.median(ts), statistics.pstdev(ts) / mean if len(ts) > 1 and mean > 0 else 0.0)
    return out


def profile_nodes(
    model: bytes, feeds: Mapping[str, np.ndarray], threads: int, runs: int = 25, max_s: float = 2.0
) -> dict[str, list[float]]:
    """Each node's own time (ms) in every run of ``model`` (nodes named uniquely) after two warm-up runs, from
    ONNX Runtime's profiler: the kernels as they run in the graph, each in turn within every run (interleaved),
    without the per-call overhead. At least 5 runs, at most ``runs``, stopping after ``max_s`` seconds."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="chipfit-profile-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        f = dict(feeds)
        sess.run(None, f)
        sess.run(None, f)
        start = time.perf_counter()
        for i in range(runs):
            sess.run(None, f)
            if i >= 4 and time.perf_counter() - start > max_s:
                break
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], []).append(float(e["dur"]) / 1e3)
    return {name: ts[2:] for name, ts in per.items() if len(ts) > 2}
