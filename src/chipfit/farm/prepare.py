"""The driver's work before a farm fit dispatches anything (so it never overlaps a node's measurement on the same
cores): every variant built once, and the reference's outputs that fidelity is measured against."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from chipfit.fsutil import atomic_write_bytes
from chipfit.search.space import Candidate

__all__ = ["build_variants", "reference_outputs"]


def build_variants(run: Any, candidates: dict[str, list[Candidate]]) -> float:
    """Every pass chain the candidates need, built once here before any is dispatched; the seconds it took."""
    from chipfit.passes import apply_passes

    t0 = time.monotonic()
    done: set[str] = set()
    for t, cands in candidates.items():
        ctx = run.ctx[t]
        for c in cands:
            key = repr(c.passes)
            if c.skip or not c.passes or key in done:
                continue
            done.add(key)
            try:  # each step's folder, for nodes that get the variant shipped
                steps = [dict(p) for p in c.passes]
                run.variant_dirs[key] = [
                    apply_passes(
                        ctx.model_path, ctx.model_sha256, steps[: i + 1], ctx.variants_dir, ctx.pass_context()
                    )[0].parent
                    for i in range(len(steps))
                ]
            except Exception as exc:  # the node's worker reports the failure as the candidate's result
                run.say(f"building {c.pass_label()} failed here ({type(exc).__name__}); its nodes will report it")
    return time.monotonic() - t0


def reference_outputs(run: Any, candidates: dict[str, list[Candidate]]) -> float:
    """The reference's outputs on the evaluation data, computed here before anything is dispatched (fidelity is
    measured against them), so that the reference is measured in the same stage as the variants instead of
    alone before them, while the other nodes wait; the seconds it took. Left to the reference's node when its
    backend cannot run here."""
    from chipfit.backends import get_backend
    from chipfit.data import Dataset
    from chipfit.measure.outputs import collect_outputs

    t0 = time.monotonic()
    for t, cands in candidates.items():
        ctx = run.ctx[t]
        ref = next((c for c in cands if c.reference and not c.skip), None)
        if ref is None or ctx.reference_path.exists():
            continue
        backend = get_backend(ref.backend)
        if backend.unavailable_reason() is not None or ref.target not in backend.capabilities.devices:
            continue
        q = ctx.job(ref).quality
        options = {**ref.options, **({"batch": ref.batch} if backend.capabilities.specializes_batch else {})}
        exe = backend.compile(ctx.model_path, ref.target, options)
        try:
            data = Dataset.load_saved(ctx.data_dir, ctx.input_names)
            fixed = backend.capabilities.specializes_batch
            outputs = collect_outputs(exe, data.inputs, ref.batch if fixed else q.chunk, q.limit, fixed)
        finally:
            exe.close()
        buf = io.BytesIO()
        np.savez(buf, *outputs)
        atomic_write_bytes(ctx.reference_path, buf.getvalue())  # read by nodes on this host as soon as it exists
        run.say(f"{t}: the reference's outputs computed here ({ref.backend}, {len(outputs[0])} samples)")
    return time.monotonic() - t0
