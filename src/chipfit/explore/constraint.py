"""The hardware bound inside ``chipfit explore`` (``--target X --max-p99-ms N --max-memory-mb M``).

A configuration whose model would miss the bound on the target is rejected *before training* when the
prediction says so beyond its error margin (the space's ``deploy.model`` builds the untrained model from the
config; it is exported to ONNX and given to the latency predictor, and its weights are counted against the
memory bound), and *after its first report* otherwise: on this machine its exported model is measured through
``fit`` (ONNX Runtime, batch 1); on another target the prediction is the best estimate there is and is used
as is. The budget is then spent on models that can be deployed.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chipfit.errors import SpecError
from chipfit.explore.job import HardwareBound

if TYPE_CHECKING:
    from chipfit.explore.trial import TrialContext

__all__ = ["DEPLOY_DATA", "check_after_first_report", "check_before_training", "export_model", "prepare_bound"]

_BEFORE = "predicted before training"


def prepare_bound(
    space: Any,
    target: Any,
    is_local: bool,
    max_p99_ms: float | None,
    max_memory_mb: float | None,
    store_url: str,
    workdir: Path,
) -> HardwareBound | None:
    """The bound a trial checks, with the predictor trained once on the store and saved for the trials."""
    if max_p99_ms is None and max_memory_mb is None:
        return None
    if not space.deploy:
        raise SpecError(
            f"--max-p99-ms / --max-memory-mb need a 'deploy:' section in {space.path} with 'model' (config -> "
            "torch.nn.Module) and 'inputs' ({name: shape}), so each configuration's model can be checked."
        )
    from chipfit.predict import Predictor, predict_eval, training_rows
    from chipfit.store import Store

    rows = training_rows(Store(store_url))
    predictor = Predictor().fit(rows)
    rel = math.inf
    if len({r["model_hash"] for r in rows}) >= 2:
        rel = float(predict_eval(rows).get("median_ape") or math.inf)
    predictor.rel_error = rel
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "predictor.pkl"
    data = pickle.dumps((predictor, target))
    path.write_bytes(data)
    from chipfit.provenance import mark

    # the trials unpickle it: sign it with this home's key so that a file swapped in the study folder is refused
    path.with_suffix(".mark").write_text(mark({path.name: hashlib.sha256(data).hexdigest()}))
    return HardwareBound(
        target=target.name,
        max_p99_ms=max_p99_ms,
        max_memory_mb=max_memory_mb,
        measure=is_local,
        predictor=str(path),
        rel_error=rel,
        margin=1.0 + 3.0 * rel if math.isfinite(rel) else math.inf,
        store=store_url,
    )


def _example_inputs(space: Any, batch: int = 2) -> tuple[Any, ...]:
    import torch

    return tuple(torch.randn(batch, *shape[1:]) for shape in space.deploy["inputs"].values())


def _to_onnx(space: Any, module: Any, where: Path, data: dict[str, Any] | None = None) -> Any:
    """Export with the TorchScript exporter first (milliseconds, where dynamo takes seconds: a check runs per
    trial), then chipfit's usual ingest (dynamo first) when that fails. Either way the ONNX model is checked
    against the module's own outputs (the example inputs, generated ones, and ``data`` when given) before it
    is used: a trace that baked in one branch of the module's control flow is an error naming the module and
    the largest difference, never a different model measured or delivered. The module's training mode is
    left as it was (the check runs in the middle of a trial's training)."""
    from chipfit.torch_export import eval_mode

    with eval_mode(module):
        return _export_checked(space, module, where, data)


def _export_checked(space: Any, module: Any, where: Path, data: dict[str, Any] | None) -> Any:
    import warnings

    import torch

    from chipfit.model import load_model
    from chipfit.torch_export import verify_export

    names = list(space.deploy["inputs"])
    path = where / "trial.onnx"
    example = _example_inputs(space)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                input_names=names,
                dynamic_axes={n: {0: "batch"} for n in names},
            )
    except Exception:  # any exporter failure: the slower path (which checks its export too) says why if it fails
        return load_model(module, example, input_names=names, home=where)
    hint = "; ".join(sorted({str(w.message).splitlines()[0][:200] for w in caught if "Tracer" in w.category.__name__}))
    verify_export(module, path, example, input_names=names, data=data, hint=hint)
    return load_model(path, home=where)


def _predicted(bound: HardwareBound, model: Any) -> dict[str, Any]:
    from chipfit.predict import model_info
    from chipfit.provenance import verifies
    from chipfit.search.space import Candidate

    path = Path(bound.predictor)
    data = path.read_bytes()
    signed = path.with_suffix(".mark").read_text() if path.with_suffix(".mark").is_file() else ""
    if not verifies({path.name: hashlib.sha256(data).hexdigest()}, signed):
        raise ValueError(f"'{path}' was not written by this run's chipfit (its mark does not verify); not unpickled.")
    predictor, target = pickle.loads(data)
    threads = target.threads or target.cores
    cand = Candidate("onnxruntime", options={"graph_optimization_level": "all", "intra_op_num_threads": threads})
    p = predictor.predict(model_info(model.stats), cand.to_dict(), target)
    return {"p99_ms": p.p99_ms, "p50_ms": p.p50_ms, "memory_mb": model.stats.param_bytes / 2**20}


def _verdict(bound: HardwareBound, values: dict[str, Any], margin: float, source: str) -> dict[str, Any]:
    misses = []
    p99 = values.get("p99_ms")
    if bound.max_p99_ms is not None and p99 is not None and p99 > bound.max_p99_ms * margin:
        beyond = f" (beyond the predictor's margin ×{margin:.2f})" if margin > 1 else ""
        misses.append(f"p99 {p99:.3g} ms > {bound.max_p99_ms:g} ms{beyond}")
    if bound.max_memory_mb is not None and values["memory_mb"] > bound.max_memory_mb:
        misses.append(f"memory {values['memory_mb']:.3g} MB > {bound.max_memory_mb:g} MB")
    where = f" on {bound.target}"
    detail = f"{source}{where}: " + ("; ".join(misses) if misses else "meets the bound")
    return {"ok": not misses, "source": source, **values, "detail": detail}


def _bound(ctx: TrialContext) -> HardwareBound:
    if ctx.job.bound is None:
        raise ValueError(f"trial {ctx.number} has no hardware bound to check: its job was built without one.")
    return ctx.job.bound


def check_before_training(ctx: TrialContext) -> dict[str, Any] | None:
    """Predicted check on the untrained model of this config; a miss beyond the error margin rejects it."""
    bound = _bound(ctx)
    build = ctx.space.load_function(ctx.space.deploy["model"], "deploy.model")
    module = build(ctx.config)
    weights_mb = _weights_mb(module)
    if bound.max_memory_mb is not None and weights_mb > bound.max_memory_mb:
        # the weights alone miss the bound: no export, no prediction (a large model's export takes seconds)
        return _verdict(bound, {"p99_ms": None, "p50_ms": None, "memory_mb": weights_mb}, 1.0, _BEFORE)
    with tempfile.TemporaryDirectory(prefix="chipfit-check-") as tmp:
        model = _to_onnx(ctx.space, module, Path(tmp))
        values = _predicted(bound, model)
    # memory is the weights themselves: exact, no margin; latency only beyond the predictor's error margin
    return _verdict(bound, values, bound.margin, _BEFORE)


def _weights_mb(module: Any) -> float:
    """Parameters and buffers of the torch module, in MiB (what the exported model's initializers hold)."""
    tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def check_after_first_report(ctx: TrialContext, module: Any) -> dict[str, Any]:
    """Measured through ``fit`` on this machine (the bound's target is this machine)."""
    bound = _bound(ctx)
    if module is None:
        build = ctx.space.load_function(ctx.space.deploy["model"], "deploy.model")
        module = build(ctx.config)  # latency and weight size do not depend on the trained values
    import numpy as np

    from chipfit.pipeline import fit
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.space import SpaceOptions

    with tempfile.TemporaryDirectory(prefix="chipfit-check-") as tmp:
        model = _to_onnx(ctx.space, module, Path(tmp))
        rng = np.random.default_rng(0)
        data = {
            name: rng.standard_normal((16, *shape[1:])).astype(np.float32)
            for name, shape in ctx.space.deploy["inputs"].items()
        }
        result = fit(
            model,
            data,
            space=SpaceOptions(
                backends=("onnxruntime",),
                batch_sizes=(1,),
                threads=(max(1, ctx.threads),),
                opt_levels=("all",),
                passes=(),
            ),
            settings=MeasureSettings(predict=False, timeout_s=60.0, option_sweep_top=0, batch_sweep_top=0),
            store=bound.store,
            home=Path(tmp),
            progress=False,  # a check inside a trial: the explore run shows its own progress
        )
    best = min((c for c in result.candidates if c.measurement.ok), key=lambda c: c.metric("p99_ms"), default=None)
    if best is None:
        return {"ok": False, "source": "measured", "detail": "the exported model could not be measured"}
    mem = best.metric("peak_memory_mb") or model.stats.param_bytes / 2**20
    values = {"p99_ms": best.metric("p99_ms"), "p50_ms": best.metric("p50_ms"), "memory_mb": mem}
    return _verdict(bound, values, 1.0, "measured after the first report")


DEPLOY_DATA = "deploy-data.npz"  # the space's evaluation data, saved by the first trial that exports


def _deploy_data(ctx: TrialContext, folder: Path) -> dict[str, Any] | None:
    """The space's ``deploy.data`` arrays, saved once next to the checkpoints, so that the winner's fit reads
    them without importing the trainable (and torch) in the driver."""
    import numpy as np

    ref = ctx.space.deploy.get("data")
    if not ref:
        return None
    path = folder / DEPLOY_DATA
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays: dict[str, Any] = {
        str(k): np.asarray(v) for k, v in dict(ctx.space.load_function(ref, "deploy.data")()).items()
    }
    tmp = folder / f".{DEPLOY_DATA}.{ctx.number}.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: trials running at once each write a whole file
    return arrays


def export_model(ctx: TrialContext, module: Any) -> str | None:
    """The trial's trained model as ONNX next to its checkpoint (None when the trainable gave no module),
    checked against the module on the space's evaluation data too."""
    import shutil

    if module is None or not hasattr(module, "state_dict"):
        return None
    dest = Path(ctx.job.checkpoint).with_suffix(".onnx")
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = _deploy_data(ctx, dest.parent)
    with tempfile.TemporaryDirectory(prefix="chipfit-export-") as tmp:
        model = _to_onnx(ctx.space, module, Path(tmp), data)
        shutil.copyfile(model.path, dest)
    return str(dest)
