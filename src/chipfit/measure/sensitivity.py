"""Per-node quantization sensitivity, run in a worker process (a ``WorkerJob`` with ``sensitivity`` set).

For one quantized candidate, each node its quantization pass would quantize is quantized *alone* (the rest
stays fp32), the result runs on a few calibration samples, and its error against the fp32 model's outputs
(1 − cosine similarity) is that node's sensitivity. Nodes whose quantization alone hurts most are the ones
the accuracy-aware search keeps in fp32 first. Stops at the job's deadline; nodes not reached are returned
unranked.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.measure.job import SensitivityRanking, SensitivityRequest, WorkerJob, WorkerResult
from chipfit.measure.outputs import collect_outputs

__all__ = ["rank"]


def _run(exe: Any, data: dict[str, np.ndarray], chunk: int) -> np.ndarray:
    """The first output on ``data``, in chunks, flattened."""
    return np.asarray(collect_outputs(exe, data, chunk, None)[0], dtype=np.float64).ravel()


def _error(out: np.ndarray, ref: np.ndarray) -> float:
    denom = float(np.linalg.norm(out) * np.linalg.norm(ref))
    cos = float(out @ ref) / denom if denom > 0 else (1.0 if np.allclose(out, ref) else 0.0)
    return max(0.0, 1.0 - cos) if np.isfinite(cos) else 1.0


def rank(job: WorkerJob, request: SensitivityRequest) -> WorkerResult:
    """Each node the quantizing pass at ``request.quant_index`` quantizes, quantized alone; never raises."""
    from chipfit.backends import get_backend
    from chipfit.data import Dataset
    from chipfit.passes import PassContext, apply_passes, get_pass
    from chipfit.passes.base import QuantizingPass
    from chipfit.passes.quant_common import prepare

    deadline = time.monotonic() + request.time_s
    try:
        ctx = PassContext(job.calib_dir, job.calib_sha256, list(job.input_names))
        chain, qi = [p.as_dict() for p in job.passes], request.quant_index
        base, _ = apply_passes(job.model_path, job.model_sha256, chain[:qi], job.variants_dir, ctx)
        source = job.calib_dir if job.calib_dir is not None else job.data_dir
        full = Dataset.load_saved(source, list(job.input_names)).inputs
        n = min(len(next(iter(full.values()))), request.samples)
        data = {k: np.ascontiguousarray(v[:n]) for k, v in full.items()}
        chunk = max(1, min(job.quality.chunk, n))
        backend = get_backend(job.backend)
        qpass = get_pass(chain[qi]["name"])
        if not isinstance(qpass, QuantizingPass):
            raise TypeError(f"pass {chain[qi]['name']} cannot quantize nodes one by one")
        params = {k: v for k, v in chain[qi].get("params", {}).items() if k not in ("exclude", "nodes")}
        if "samples" in qpass.params:  # calibrate on few samples: the ranking needs order, not precision
            params["samples"] = min(int(params.get("samples", 128)), 32)
        with tempfile.TemporaryDirectory(dir=job.variants_dir) as tmp_s:
            tmp = Path(tmp_s)
            prepared, _ = prepare(base, tmp)
            ref = _run(backend.compile(prepared, job.target, dict(job.options)), data, chunk)
            nodes = qpass.quantizable(prepared)
            ranked: list[tuple[str, float]] = []
            for i, node in enumerate(nodes):
                if time.monotonic() > deadline:
                    break
                path = tmp / f"node{i}.onnx"
                qpass.quantize(prepared, path, {**params, "nodes": [node]}, ctx)
                for j, step in enumerate(chain[qi + 1 :]):  # the steps after quantization, e.g. graph optimization
                    nxt = tmp / f"node{i}-{j}.onnx"
                    if get_pass(step["name"]).apply(path, nxt, dict(step.get("params", {})), ctx).applied:
                        path = nxt
                exe = backend.compile(path, job.target, dict(job.options))
                ranked.append((node, _error(_run(exe, data, chunk), ref)))
                exe.close()
        ranked.sort(key=lambda r: -r[1])
        done = {r[0] for r in ranked}
        found = SensitivityRanking(ranking=tuple(ranked), unranked=tuple(x for x in nodes if x not in done), samples=n)
        return WorkerResult(status="ok", sensitivity=found)
    except BaseException as exc:  # recorded, never propagated
        return WorkerResult(
            status="failed",
            error=f"sensitivity: {type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc(limit=8)[-4000:],
        )
