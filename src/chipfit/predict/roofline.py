"""Roofline estimates per node: each node takes the longer of its arithmetic at the target's peak rate for
its dtype and its memory traffic at the target's bandwidth, plus a fixed dispatch cost; the model's estimate
is the sum over nodes (nodes run one after another in the sessions chipfit measures).

Node FLOPs and bytes come from ``graph_stats`` (per sample); at batch ``b`` the FLOPs and activation bytes
scale by ``b`` and the weights are read once; traffic that fits in a CPU's caches moves faster than DRAM.
The dtype of the heavy nodes follows the candidate's passes: int8 for the int8 passes, fp16 for the fp16
pass, fp32 otherwise. ``predict.model`` learns how far the backends are from this estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chipfit.hardware.catalog import Target

__all__ = ["HEAVY_OPS", "model_info", "node_dtype", "roofline_ms"]

HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "MultiHeadAttention", "Einsum"}
DISPATCH_US = {"cpu": 1.0, "gpu": 5.0}  # per node: kernel launch / operator dispatch


def _cache_factor(nbytes: float, gpu: bool) -> float:
    """A node whose traffic fits in cache is not limited by DRAM bandwidth: L2-sized ×4, L3-sized ×2."""
    if gpu:
        return 1.0
    return 4.0 if nbytes < 1 << 20 else 2.0 if nbytes < 16 << 20 else 1.0


def model_info(stats: Any) -> dict[str, Any]:
    """What the predictor keeps of a model (stored with its measurements): per-node FLOPs and bytes."""
    nodes = [[n.op_type, int(n.flops or 0), int(n.bytes or 0), int(getattr(n, "weight_bytes", 0))] for n in stats.nodes]
    return {
        "flops": int(stats.flops),
        "bytes": int(stats.bytes),
        "params": int(stats.params),
        "param_bytes": int(stats.param_bytes),
        "n_nodes": int(stats.n_nodes),
        "nodes": nodes,
    }


def node_dtype(passes: Sequence[Mapping[str, Any]]) -> str:
    """The arithmetic dtype the candidate's passes give its heavy nodes."""
    names = {p.get("name") for p in passes}
    if names & {"int8_dynamic", "int8_static", "nncf_int8"}:
        return "int8"
    if "fp16" in names:
        return "fp16"
    return "fp32"


def roofline_ms(
    info: Mapping[str, Any], target: Target, batch: int, dtype: str = "fp32", threads: int | None = None
) -> float:
    """Estimated milliseconds for one run at ``batch`` on ``target`` using ``threads`` of its cores."""
    share = 1.0
    if threads and not target.gpu:
        share = min(1.0, threads / float(target.threads or target.cores))
    gflops_heavy = target.peak(dtype) * share
    gflops_other = target.peak("fp32") * share
    bw = target.mem_bw_gbs * (1.0 if target.gpu else max(share, 0.5))  # a few cores draw most of the bandwidth
    dispatch = DISPATCH_US["gpu" if target.gpu else "cpu"] * 1e-6
    total = 0.0
    for op, flops, nbytes, wbytes in info["nodes"]:
        act = max(0, nbytes - wbytes)
        rate = gflops_heavy if op in HEAVY_OPS else gflops_other
        w = wbytes / (4 if dtype == "int8" and op in HEAVY_OPS else 2 if dtype == "fp16" and op in HEAVY_OPS else 1)
        t_compute = flops * batch / (rate * 1e9)
        traffic = w + act * batch
        t_memory = traffic / (bw * _cache_factor(traffic, bool(target.gpu)) * 1e9)
        total += max(t_compute, t_memory) + dispatch
    return total * 1e3
