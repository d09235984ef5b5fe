"""``chipfit fit --farm ADDRESS --targets T1,T2``: the local fit's candidate space, built per target and measured
on the farm's nodes of that target by the same isolated worker (``measure.runner``), each result stored as it
arrives; then the local fit's selection, one winner per target.

The search follows a local fit's stages, each dispatched in parallel across the farm: the reference (the baseline
and the source of fidelity's reference outputs), every variant at the first batch size with its backend's default
options, the other options for the fastest variants, and larger batches for the fastest configurations. Variants
are built on the driver before anything is dispatched, so building never overlaps a node's measurement; a node
reads the driver's files in place, or gets them shipped by content (``farm.ship``).

Measurements are stored under the target and whether it was declared (``--as``) or detected, with the measuring
node's environment fingerprint beside them: the same command again reuses them (none measured twice).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from chipfit.data import load_data, split_data, validate_data
from chipfit.errors import SpecError
from chipfit.farm.dispatch import Dispatcher, Outcome, Work
from chipfit.farm.nodes import FarmError, FarmNode, farm_nodes
from chipfit.farm.prepare import build_variants, reference_outputs
from chipfit.farm.result import FarmFitResult, TargetResult
from chipfit.farm.ship import ShippedFile, Shipper, manifest
from chipfit.farm.task import FarmTask
from chipfit.hardware.detect import environment_fingerprint, fingerprint_hash
from chipfit.measure.measurement import Measurement
from chipfit.measure.quality import check_labels, default_metric
from chipfit.model import load_model
from chipfit.package import check_writable, write_artifact
from chipfit.pipeline import check_reference_session
from chipfit.predict.roofline import model_info
from chipfit.result import FitResult
from chipfit.search.driver import MeasureSettings, SearchContext, cap_s
from chipfit.search.select import CandidateResult, choose_winner, evaluate, near_misses, pareto_front
from chipfit.search.space import Candidate, SpaceOptions, build_space
from chipfit.spec import Spec, load_spec
from chipfit.store import Store, default_url
from chipfit.workspace import default_home, subdir

__all__ = ["farm_fit", "resolve_targets", "runs_on"]

Progress = Callable[[str], None]
_RETRYABLE = ("failed", "timeout", "oom")


def runs_on(c: Candidate) -> str:
    """What a node must offer to measure ``c``: its backend, and the device when that is not the CPU
    (``onnxruntime-cuda``), as nodes advertise it (``backends.runtime_devices``)."""
    return c.backend if c.target == "cpu" else f"{c.backend}-{c.target}"


def _what(c: Candidate) -> str:
    return f"backend {c.backend}" if c.target == "cpu" else f"{c.backend} on {c.target}"


def resolve_targets(nodes: Sequence[FarmNode], asked: Sequence[str] | None) -> list[str]:
    """The targets to fit for: those asked for (``None`` or ``all``: every target in the farm), each checked."""
    present = sorted({n.target for n in nodes if n.alive and n.slots > 0})
    if not present:
        raise FarmError("the farm has no live chipfit node: add one with `chipfit farm join ADDRESS`.")
    if asked is None or list(asked) == ["all"]:
        return present
    missing = [t for t in asked if t not in present]
    if missing:
        raise FarmError(
            f"--targets: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the farm; its targets: "
            f"{', '.join(present)}. Ask for those, or add a node with `chipfit farm join ADDRESS --as TARGET`."
        )
    return list(dict.fromkeys(asked))


class _Run:
    """One farm fit's state: per target, its search context, candidates, results and the node of each."""

    def __init__(self, address: str, nodes: list[FarmNode], spec: Spec, store: Store, progress: Progress | None):
        self.address, self.nodes, self.spec, self.store, self.progress = address, nodes, spec, store, progress
        self.ctx: dict[str, SearchContext] = {}
        self.results: dict[str, list[CandidateResult]] = {}
        self.node_of: dict[str, dict[str, str]] = {}
        self.lost: dict[str, int] = {}
        self.redispatched: dict[str, int] = {}
        self.overheads: list[float] = []
        self.fingerprints: dict[str, dict[str, Any]] = {}  # per target: a measuring node's environment
        self.variant_dirs: dict[str, list[Path]] = {}  # pass chain -> the folder of each of its steps, built here
        self.dispatcher = Dispatcher(address, nodes)
        here = self.dispatcher.ray.util.get_node_ip_address()
        # files go through Ray's object store only when a node is on another host (a local farm shares them)
        self.shipper = Shipper(self.dispatcher.ray) if any(n.address != here for n in nodes) else None

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def stored(self, t: str, c: Candidate, settings: MeasureSettings) -> Measurement | None:
        ctx = self.ctx[t]
        if settings.fresh:
            return None
        m = self.store.get(ctx.model_sha256, c, ctx.context_hash, ctx.env_hash)
        if m is None or m.status == "pruned" or (settings.retry_failed and m.status in _RETRYABLE):
            return None
        if c.reference and m.ok and not ctx.reference_path.exists():
            return None  # the reference outputs are gone: measure the reference again to recreate them
        return m

    def measure(self, pairs: list[tuple[str, Candidate, str | None]], settings: MeasureSettings) -> None:
        """Measure (or reuse, or skip with the reason) each (target, candidate, skip) of one stage."""
        works: list[Work] = []
        by_task: dict[str, tuple[str, Candidate]] = {}
        for t, c, skip in pairs:
            skip = c.skip or skip
            stored = None if skip else self.stored(t, c, settings)
            if skip:
                self.results[t].append(CandidateResult(c, Measurement("skipped", error=skip), "skipped"))
            elif stored is not None:
                self.results[t].append(CandidateResult(c, stored, "stored"))
                self.node_of[t][c.id] = str(stored.metrics.get("farm_node", ""))
            else:
                ctx = self.ctx[t]
                task = FarmTask(
                    task_id=f"{t}.{c.id}",
                    target=t,
                    job=self.job(ctx, c),
                    timeout_s=cap_s(ctx, c),
                    memory_limit_mb=settings.memory_limit_mb,
                    workdir=ctx.workdir / c.id,
                    files=self.files(ctx, c),
                )
                works.append(Work(task, runs_on(c), blobs=self.shipper.refs_for(task.files) if self.shipper else {}))
                by_task[task.task_id] = (t, c)
        if works:
            self.dispatcher.run(works, lambda o: self.arrived(o, *by_task[o.work.task.task_id]))

    def job(self, ctx: SearchContext, c: Candidate) -> Any:
        """The candidate's worker job; the reference saves its outputs only when the driver has none yet."""
        job = ctx.job(c)
        if c.reference and ctx.reference_path.exists():  # computed here: a node must not rewrite what others read
            job = job.model_copy(update={"quality": job.quality.model_copy(update={"save_reference": None})})
        return job

    def files(self, ctx: SearchContext, c: Candidate) -> tuple[ShippedFile, ...]:
        """What the task reads: model, data, the variant's steps as built here, the reference outputs."""
        from chipfit.onnx_files import onnx_files

        steps = self.variant_dirs.get(repr(c.passes), [])
        reference = None if c.reference else ctx.reference_path
        return manifest([*onnx_files(ctx.model_path), ctx.data_dir, ctx.calib_dir, *steps, reference])

    def arrived(self, o: Outcome, t: str, c: Candidate) -> None:
        """One task's outcome: stored at once (a lost one is not: the next run measures it)."""
        ctx = self.ctx[t]
        self.redispatched[t] += o.redispatched
        if o.reply is None:
            self.lost[t] += 1
            m = Measurement("failed", error=f"lost: {o.lost}", notes=list(o.work.tried))
            self.results[t].append(CandidateResult(c, m, "lost"))
            self.say(f"{t}: LOST {c.label()}: {o.lost}")
            return
        reply = o.reply
        if reply.reference_b64 is not None and not ctx.reference_path.exists():  # saved on a node that mirrors
            ctx.reference_path.write_bytes(base64.b64decode(reply.reference_b64))
        m = reply.result.to_measurement(reply.wall_s)
        m.metrics["farm_node"] = reply.node_id
        m.notes += [f"re-dispatched: {why}" for why in o.work.tried]
        env = {**_farm_env(t, o.node.declared if o.node else True), "node": reply.fingerprint, "node_id": reply.node_id}
        self.store.put(ctx.model_sha256, c, ctx.context_hash, env, ctx.env_hash, m)
        if o.overhead_s is not None:
            self.overheads.append(o.overhead_s)
        self.node_of[t][c.id] = reply.node_id
        self.fingerprints.setdefault(t, reply.fingerprint)
        self.results[t].append(CandidateResult(c, m, "measured"))
        p50 = m.metrics.get("p50_ms")
        took = f"p50 {p50:.3g} ms" if p50 is not None else (m.error or "")[:120]
        self.say(f"{t}: {m.status} {c.label()} · {took} · node {reply.node_id[:12]}")

    def fastest(self, t: str, top: int, key: Callable[[Candidate], str], batch: int) -> set[str]:
        evaluate(self.results[t], self.spec, _catalogue_target(t))
        ok = [r for r in self.results[t] if r.feasible and r.candidate.batch == batch and r.metric("p50_ms")]
        ok.sort(key=lambda r: r.metric("p50_ms"))
        return set(list(dict.fromkeys(key(r.candidate) for r in ok))[:top])


def _farm_env(target: str, declared: bool) -> dict[str, Any]:
    """The key farm measurements are stored under: the target, and whether its node only declared it."""
    return {"farm": {"target": target, "declared": declared}}


def _metric(spec: Spec, model: Any, data: Any) -> str | None:
    if data.labels is None:
        if spec.max_accuracy_drop is not None or spec.metric is not None:
            raise SpecError("--max-accuracy-drop and --metric need labels: add a 'labels' array to --data.")
        return None
    out_shape = tuple(d if isinstance(d, int) else 2 for d in model.outputs[0].shape) if model.outputs else ()
    metric = spec.metric or default_metric(data.labels, out_shape)
    known = tuple(d if isinstance(d, int) else None for d in model.outputs[0].shape) if model.outputs else ()
    check_labels(data.labels, metric, known, data.source)
    return metric


def farm_fit(
    model: str | Path,
    data: Any,
    spec: Spec | str | Path | None = None,
    *,
    address: str,
    targets: Sequence[str] | None = None,
    out: str | Path | None = None,
    calib_data: Any = None,
    space: SpaceOptions | None = None,
    settings: MeasureSettings | None = None,
    store: Store | str | None = None,
    home: Path | None = None,
    progress: Progress | None = None,
    trust_pickle: bool = False,
    **constraints: Any,
) -> FarmFitResult:
    """Fit ``model`` for each target on the farm at ``address``: one ``FitResult`` per target."""
    started = time.monotonic()
    spec_obj = (
        load_spec(None, **{**spec.model_dump(exclude_unset=True), **constraints})
        if isinstance(spec, Spec)
        else load_spec(spec, **constraints)
    )
    raw_data = load_data(data)
    raw_calib = load_data(calib_data) if calib_data is not None else None
    nodes = farm_nodes(address)
    names = resolve_targets(nodes, targets)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        for t in names:
            check_writable(out_dir / t)  # OUT/<target>/: each target's artifact
    m = load_model(model, home=home, trust_pickle=trust_pickle)
    dataset = validate_data(raw_data, m)
    calib = validate_data(raw_calib, m) if raw_calib is not None else None
    metric = _metric(spec_obj, m, dataset)
    check_reference_session(m)
    calib_set, eval_set = split_data(dataset, calib)
    home = home or default_home()
    run_dir = subdir("runs", home) / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-farm"
    store_obj = store if isinstance(store, Store) else Store(store or default_url(home))
    store_obj.put_model(m.sha256, model_info(m.stats))
    settings = settings or MeasureSettings()
    if settings.memory_limit_mb is None:
        import psutil

        settings = replace(settings, memory_limit_mb=int(psutil.virtual_memory().total * 0.8 / 2**20))
    space = space or SpaceOptions()
    run = _Run(address, nodes, spec_obj, store_obj, progress)
    data_dir, calib_dir = eval_set.save(run_dir / "eval"), calib_set.save(run_dir / "calib")
    candidates: dict[str, list[Candidate]] = {}
    declared: dict[str, bool] = {}
    for t in names:
        mine = [n for n in nodes if n.alive and n.target == t and n.slots > 0]
        declared[t] = any(n.declared for n in mine)
        env = _farm_env(t, declared[t])
        run.ctx[t] = SearchContext(
            model_path=m.path,
            model_sha256=m.sha256,
            input_names=[x.name for x in m.inputs],
            dynamic_batch=m.dynamic_batch,
            data_dir=data_dir,
            calib_dir=calib_dir,
            calib_sha256=calib_set.sha256(),
            data_sha256=eval_set.sha256() + calib_set.sha256()[:16],
            metric=metric,
            fidelity_metric=spec_obj.fidelity_metric,
            workdir=run_dir / "jobs" / t,
            variants_dir=subdir("variants", home),
            refs_dir=subdir(f"refs/farm/{t}", home),
            store=store_obj,
            env=env,
            env_hash=fingerprint_hash(env),
            threads=min(n.cpus for n in mine) or 1,
            settings=settings,
        )
        offered = {b for n in mine for b in n.backends}
        remote = tuple(sorted(b for b in offered if "-" in b))  # a GPU on the target's nodes, maybe not here
        candidates[t] = [
            c if c.skip or runs_on(c) in offered else replace(c, skip=f"no node of {t} has {_what(c)}")
            for c in build_space(m, replace(space, remote_devices=remote), min(n.cpus for n in mine) or 1)
        ]
        run.results[t], run.node_of[t], run.lost[t], run.redispatched[t] = [], {}, 0, 0
    try:
        build_s = build_variants(run, candidates)
        build_s += reference_outputs(run, candidates)
        _search(run, candidates, settings)
        result = FarmFitResult(address, {}, 0.0, build_s, run.overheads)
        for t in names:
            fit = _select(run, t, spec_obj, space, m, started, declared[t])
            if out_dir is not None:
                fit.out_dir = write_artifact(fit, out_dir / t, run.ctx[t])
            result.targets[t] = TargetResult(t, declared[t], fit, run.node_of[t], run.lost[t], run.redispatched[t])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    result.elapsed_s = time.monotonic() - started
    return result


def _search(run: _Run, candidates: dict[str, list[Candidate]], settings: MeasureSettings) -> None:
    """The local fit's stages, each across every target at once. The reference needs its own stage only when
    its outputs could not be computed here (``farm.prepare.reference_outputs``)."""
    first = {t: min((c.batch for c in cs), default=1) for t, cs in candidates.items()}
    alone = {t for t, cs in candidates.items() if not run.ctx[t].reference_path.exists()}
    run.measure([(t, c, None) for t, cs in candidates.items() if t in alone for c in cs if c.reference], settings)
    run.measure(
        [
            (t, c, None)
            for t, cs in candidates.items()
            for c in cs
            if (c.reference and t not in alone) or (not c.reference and c.batch == first[t] and not c.option_sweep)
        ],
        settings,
    )
    top_o, top_b = settings.option_sweep_top, settings.batch_sweep_top
    sweep: list[tuple[str, Candidate, str | None]] = []
    for t, cs in candidates.items():
        variants = run.fastest(t, top_o, Candidate.variant_key, first[t])
        why = f"runtime options swept only for the {top_o} fastest feasible variants"
        sweep += [
            (t, c, None if c.variant_key() in variants else why)
            for c in cs
            if c.option_sweep and c.batch == first[t] and not c.reference
        ]
    run.measure(sweep, settings)
    larger: list[tuple[str, Candidate, str | None]] = []
    for t, cs in candidates.items():
        configs = run.fastest(t, top_b, lambda x: x.config_id, first[t])
        why = f"batch sweep only for the {top_b} fastest feasible configurations at batch {first[t]}"
        larger += [
            (t, c, None if c.config_id in configs else why) for c in cs if c.batch != first[t] and not c.reference
        ]
    run.measure(larger, settings)


def _catalogue_target(name: str) -> Any:
    """The catalogue entry of a farm target (None, hence this machine's, for a name the catalogue lacks)."""
    from chipfit.hardware.catalog import load_catalog

    return load_catalog().get(name)


def _select(
    run: _Run, t: str, spec: Spec, space: SpaceOptions, model: Any, started: float, declared: bool
) -> FitResult:
    results = run.results[t]
    evaluate(results, spec, _catalogue_target(t))  # cost and energy (and their bounds) at the target's price and power
    reference = next((r for r in results if r.candidate.reference), None)
    feasible = [r for r in results if r.feasible and (space.backends is None or r.candidate.backend in space.backends)]
    notes = [f"measured on the farm's {t} nodes" + (" (declared with --as, not detected)" if declared else "")]
    return FitResult(
        winner=choose_winner(feasible, spec.objective),
        pareto=pareto_front(results),
        candidates=results,
        near_misses=near_misses(results),
        reference=reference,
        spec=spec,
        model=model,
        environment={**run.fingerprints.get(t, environment_fingerprint()), **run.ctx[t].env},
        elapsed_s=time.monotonic() - started,
        notes=notes,
    )
