"""``chipfit.fit``: ingest → candidates → isolated measurement → selection → deployable artifact."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from chipfit.data import Dataset, load_data, split_data, validate_data
from chipfit.errors import ModelError, SpecError
from chipfit.hardware.detect import cpu_quota, environment_fingerprint, fingerprint_hash
from chipfit.measure.quality import check_labels, default_metric
from chipfit.model import Model, load_model
from chipfit.package import check_writable, write_artifact
from chipfit.predict.roofline import model_info
from chipfit.result import FitResult
from chipfit.search.driver import Callback, MeasureSettings, SearchContext, run_search
from chipfit.search.guide import make_guide
from chipfit.search.mixed_precision import MixedPrecision
from chipfit.search.progress import ProgressOption, progress_callback
from chipfit.search.select import choose_winner, evaluate, near_misses, pareto_front, quality_floor_text
from chipfit.search.space import SpaceOptions, build_space
from chipfit.spec import Spec, load_spec
from chipfit.store import Store, default_url
from chipfit.torch_export import verify_export
from chipfit.workspace import default_home, subdir

__all__ = ["FitResult", "check_reference_session", "fit"]

log = logging.getLogger("chipfit")


def _as_spec(spec: Spec | str | Path | dict[str, Any] | None, overrides: dict[str, Any]) -> Spec:
    if isinstance(spec, Spec):
        return load_spec(None, **{**spec.model_dump(exclude_unset=True), **overrides})
    if isinstance(spec, dict):
        return load_spec(None, **{**spec, **overrides})
    return load_spec(spec, **overrides)


def _quality_settings(spec: Spec, model: Model, data: Dataset) -> str | None:
    if data.labels is None:
        if spec.max_accuracy_drop is not None:
            raise SpecError(
                "--max-accuracy-drop needs labels: add a 'labels' array to --data, "
                "or bound the agreement with the original model with --min-fidelity instead."
            )
        if spec.metric is not None:
            raise SpecError(f"--metric {spec.metric} needs labels: add a 'labels' array to --data.")
        return None
    out_shape = tuple(d if isinstance(d, int) else 2 for d in model.outputs[0].shape) if model.outputs else ()
    metric = spec.metric or default_metric(data.labels, out_shape)
    known = tuple(d if isinstance(d, int) else None for d in model.outputs[0].shape) if model.outputs else ()
    check_labels(data.labels, metric, known, data.source)
    return metric


_UNKNOWN_OP = re.compile(r"([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op")
_OPSET = re.compile(r"Opset (\d+) is under development.*support for domain ([\w.]+) is till opset (\d+)", re.S)
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")


def _session_error(model: Model, exc: Exception) -> str:
    text = str(exc)
    head = f"The model ({model.source}) cannot be run by ONNX Runtime, the reference every candidate is compared with"
    if m := _UNKNOWN_OP.search(text):
        domain = m.group(1) or "ai.onnx"
        return (
            f"{head}: it uses op '{m.group(2)}' of domain '{domain}', which ONNX Runtime does not know. "
            "Export the model with standard ONNX ops only (no custom ops)."
        )
    if m := _OPSET.search(text):
        top = m.group(3)
        return (
            f"{head}: it imports opset {m.group(1)} of domain '{m.group(2)}'; this ONNX Runtime supports up to "
            f"opset {top}. Re-export with opset {top} or lower (torch.onnx.export(..., opset_version={top}))."
        )
    if m := _NO_KERNEL.search(text):
        return (
            f"{head}: it has no implementation of op '{m.group(1)}' (opset {m.group(2)}) for node "
            f"'{m.group(3)}' with its input types. Re-export with other dtypes or another opset."
        )
    detail = " ".join(text.split("failed:", 1)[-1].split())[:300]
    return f"{head}: {type(exc).__name__}: {detail}"


def check_reference_session(model: Model) -> None:
    """Open ONNX Runtime's CPU session on ``model`` once, unoptimised, before any measurement: an op, domain or
    opset it does not know is reported now, by name, rather than after every candidate has been measured."""
    from chipfit.backends import get_backend

    ort = get_backend("onnxruntime")
    if ort.unavailable_reason() is not None:  # the reference then comes from another backend
        return
    try:
        exe = ort.compile(model.path, "cpu", {"graph_optimization_level": "disable", "threads": 1})
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise ModelError(_session_error(model, exc)) from None
    exe.close()


def fit(
    model: Model | str | Path | Any,
    data: Any,
    spec: Spec | str | Path | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    calib_data: Any = None,
    example_inputs: Any = None,
    space: SpaceOptions | None = None,
    settings: MeasureSettings | None = None,
    store: Store | str | None = None,
    home: Path | None = None,
    callback: Callback | None = None,
    trust_pickle: bool = False,
    progress: ProgressOption = None,
    **constraints: Any,
) -> FitResult:
    """Find the best variant of ``model`` that meets ``spec`` on this machine; deliver it to ``out``.

    ``constraints`` are spec fields given as keywords (``max_p99_ms=20``); they override ``spec``.
    ``progress``: by default a progress bar on stderr when it is a terminal, and one line per finished
    candidate on stderr otherwise (a log, a notebook); ``False`` shows nothing; a function is called with each
    finished candidate's :class:`~chipfit.search.select.CandidateResult` (measured, or reused from the store;
    skipped candidates are not reported) and nothing is shown. ``callback(event, candidate, result, index,
    total)`` receives every event ("start" / "done") and turns the default display off (``progress=True``
    keeps it).
    ``trust_pickle`` lets a .pt2 model that holds pickles (or other code) load: dangerous, see load_model.
    """
    started = time.monotonic()
    budget_start = (settings or MeasureSettings()).clock()  # the time budget counts the whole run
    # every input is checked before the model is read: a model file can be large, slow or hostile
    spec_obj = _as_spec(spec, constraints)
    out_dir = check_writable(Path(out)) if out is not None else None
    raw_data = load_data(data)
    raw_calib = load_data(calib_data) if calib_data is not None else None
    m = model if isinstance(model, Model) else load_model(model, example_inputs, home=home, trust_pickle=trust_pickle)
    dataset = validate_data(raw_data, m)
    calib = validate_data(raw_calib, m) if raw_calib is not None else None
    metric = _quality_settings(spec_obj, m, dataset)
    check_reference_session(m)
    if m.torch_module is not None:  # its export was checked on generated inputs at ingest; now on this data
        verify_export(m.torch_module, m.path, None, input_names=[t.name for t in m.inputs], data=dataset.inputs)
    calib_set, eval_set = split_data(dataset, calib)
    notes = list(m.notes) + dataset.notes
    home = home or default_home()
    run_dir = subdir("runs", home) / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    store_obj = store if isinstance(store, Store) else Store(store or default_url(home))
    store_obj.put_model(m.sha256, model_info(m.stats))  # the predictor learns from this model's measurements
    env = environment_fingerprint()
    settings = settings or MeasureSettings()
    if settings.memory_limit_mb is None:  # a runaway candidate must not take the machine down
        import psutil

        settings = replace(settings, memory_limit_mb=int(psutil.virtual_memory().total * 0.8 / 2**20))
    ctx = SearchContext(
        model_path=m.path,
        model_sha256=m.sha256,
        input_names=[t.name for t in m.inputs],
        dynamic_batch=m.dynamic_batch,
        data_dir=eval_set.save(run_dir / "eval"),
        calib_dir=calib_set.save(run_dir / "calib"),
        calib_sha256=calib_set.sha256(),
        data_sha256=eval_set.sha256() + calib_set.sha256()[:16],
        metric=metric,
        fidelity_metric=spec_obj.fidelity_metric,
        workdir=run_dir / "jobs",
        variants_dir=subdir("variants", home),
        refs_dir=subdir("refs", home),
        store=store_obj,
        env=env,
        env_hash=fingerprint_hash(env),
        threads=cpu_quota(),
        settings=settings,
    )
    space = space or SpaceOptions()
    candidates = build_space(m, space, cpu_quota())
    budget = spec_obj.time_budget
    refine = MixedPrecision(ctx, spec_obj, started + budget if budget else None)
    try:
        sample = {k: v[:1] for k, v in eval_set.inputs.items()}  # kernel-level predictions run the variants once
        first = min((c.batch for c in candidates), default=1)
        guide = make_guide(model_info(m.stats), store_obj, ctx, sample, first) if settings.predict else None
        with progress_callback(progress, callback) as on_event:
            results = run_search(
                ctx, candidates, budget, on_event, spec=spec_obj, refine=refine, guide=guide, started=budget_start
            )
        reference = next((r for r in results if r.candidate.reference), None)
        if reference is not None and not reference.measurement.ok:
            raise ModelError(
                f"Model '{m.path}' fails to run as given on {reference.candidate.backend}'s default session: "
                f"{reference.measurement.error}"
            )
        evaluate(results, spec_obj)
        # with --backends, ONNX Runtime's default session is measured as the baseline but wins only if asked for
        feasible = [
            r for r in results if r.feasible and (space.backends is None or r.candidate.backend in space.backends)
        ]
        if refine.report is not None:
            notes.append(f"mixed precision on {refine.report.base}: {refine.report.outcome}")
        floor = quality_floor_text(spec_obj)
        if floor and any(r.quality_floor is not None for r in results):
            notes.append(floor)
        result = FitResult(
            winner=choose_winner(feasible, spec_obj.objective),
            pareto=pareto_front(results),
            candidates=results,
            near_misses=near_misses(results),
            reference=reference,
            spec=spec_obj,
            model=m,
            environment=env,
            elapsed_s=time.monotonic() - started,
            notes=notes,
            mixed_precision=refine.report.to_dict() if refine.report else None,
        )
        if out_dir is not None:  # while the run's calibration data still exists (the winner may need it)
            result.out_dir = write_artifact(result, out_dir, ctx)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result
