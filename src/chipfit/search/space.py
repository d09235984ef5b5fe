"""The candidate space: recipe of passes × backend × backend options × target × batch size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chipfit.candidate import Candidate

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["Candidate", "SpaceOptions", "build_space"]


@dataclass(frozen=True)
class SpaceOptions:
    """Which dimensions to explore; None means the backend's full set for this machine."""

    backends: tuple[str, ...] | None = None  # None: every backend available here
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: tuple[int, ...] | None = None
    opt_levels: tuple[str, ...] | None = None  # "none" = the model as given, or basic / extended / all
    execution_modes: tuple[str, ...] | None = None
    passes: tuple[str, ...] | None = None  # pass families beyond graph levels; None: all that suit the model
    target: str = "cpu"
    tune_trials: int = 0  # compiler auto-tuning budget per candidate (TVM MetaSchedule trials per task)
    tune_time_s: float | None = None
    # "backend-device" pairs (``onnxruntime-cuda``, ``torch-cuda``) that run where the candidates are measured
    # though not on this machine (a farm's GPU nodes): their options are measured as if present here
    remote_devices: tuple[str, ...] = ()


def _resolve_options(opts: list[dict[str, Any]], space: SpaceOptions) -> list[tuple[int, dict[str, Any]]]:
    """(index, option) with the run's tuning budget filled in where a backend asks for it; such options are
    dropped without a budget, and so are options the space's filters exclude. A backend that offers a single
    thread count (``threads``: the machine's) runs at each of ``space.threads`` when they are given."""
    out: list[tuple[int, dict[str, Any]]] = []
    for j, o in enumerate(opts):
        if "tune_trials" in o and o["tune_trials"] is None:
            if not space.tune_trials:
                continue
            o = {**o, "tune_trials": space.tune_trials, "tune_time_s": space.tune_time_s}
        for opt in _with_threads(o, space):
            if _keep_options(opt, space) and all(opt != kept for _, kept in out):
                out.append((j, opt))
    return out


def _with_threads(opt: dict[str, Any], space: SpaceOptions) -> list[dict[str, Any]]:
    """``opt`` at the thread counts the space asks for: a ``threads`` option becomes one option per count (most
    threads first); ``intra_op_num_threads`` sweeps are filtered by ``_keep_options``."""
    if space.threads is None or "threads" not in opt:
        return [opt]
    return [{**opt, "threads": t} for t in sorted(set(space.threads), reverse=True)]


def _keep_variant(variant: list[dict[str, Any]], space: SpaceOptions, has_levels: bool) -> bool:
    """Precision/fusion variants are filtered by ``space.passes``; plain graph levels by ``space.opt_levels``
    (for backends that have them)."""
    families = {p["name"] for p in variant} - {"ort_graph_opt", "attention_canonical"}  # graph forms, not precisions
    if families:
        return space.passes is None or families <= set(space.passes)
    if space.opt_levels is None or not has_levels:
        return True
    level = next((p["params"]["level"] for p in variant if p["name"] == "ort_graph_opt"), "none")
    return level in space.opt_levels


def _keep_options(opt: dict[str, Any], space: SpaceOptions) -> bool:
    """Filters apply to the options a backend has; a backend without thread options is not filtered by them."""
    for key in ("intra_op_num_threads", "threads"):
        if space.threads is not None and key in opt and opt[key] not in space.threads:
            return False
    mode = opt.get("execution_mode")
    return space.execution_modes is None or mode is None or mode in space.execution_modes


def build_space(model: Model, space: SpaceOptions, cpus: int) -> list[Candidate]:
    """Every candidate for ``model``: first the reference, then batch 1 for each variant with its backend's
    default options, then the other options (the driver measures them for the fastest variants), then larger
    batches. Variants a backend deems not worth measuring here carry a ``skip`` reason.

    Batch sizes above 1 need a dynamic batch dimension; with a fixed one, only the model's own batch runs.
    """
    from chipfit.backends import available_backends, get_backend

    batches = sorted(set(space.batch_sizes)) if model.dynamic_batch else [_fixed_batch(model)]
    out: list[Candidate] = []
    names = space.backends if space.backends is not None else tuple(available_backends())
    if "onnxruntime" not in names:  # ONNX Runtime's default session is always the baseline and reference
        names = ("onnxruntime", *names)
    for name in names:
        opts = get_backend(name).option_space(model, cpus)
        if opts.unsuitable:
            out.append(Candidate(name, (), {}, space.target, batches[0], skip=opts.unsuitable))
            continue
        if opts.reference_options is not None and not any(c.reference for c in out):  # the default session, at b1
            out.extend(
                Candidate(name, (), dict(opts.reference_options), space.target, b, reference=i == 0)
                for i, b in enumerate(batches)
            )
        if space.backends is not None and name not in space.backends:
            continue  # measured only as the reference
        kept = _resolve_options(opts.options, space)
        has_levels = any(p["name"] == "ort_graph_opt" for v in opts.variants for p in v)
        listed_skips = False
        for i, variant in enumerate(opts.variants):
            if not _keep_variant(variant, space, has_levels):
                continue
            option_skips, listed_skips = not listed_skips, True  # options skipped here: listed once
            vskip = opts.skip.get(i)
            if vskip and space.passes is not None and ({p["name"] for p in variant} & set(space.passes)):
                vskip = None  # asked for by name: measure it anyway
            for k, (j, opt) in enumerate(kept[:1] if vskip else kept):  # a skipped variant is listed once
                target = str(opt.get("device", space.target))
                remote = target != space.target and f"{name}-{target}" in space.remote_devices
                oskip = None if remote else opts.option_skip.get(j)
                if oskip and not option_skips:
                    continue
                skip = vskip or oskip
                rest = {key: v for key, v in opt.items() if key != "device"}
                sweep = k >= opts.primary and not remote  # a remote device's options: measured for every variant
                out.extend(
                    Candidate(name, tuple(variant), rest, target, b, skip=skip, option_sweep=sweep)
                    for b in (batches[:1] if skip else batches)
                )
    # reference first; per batch size the default options of every variant, then the other options (stable)
    return sorted(out, key=lambda c: (not c.reference, c.batch, c.option_sweep))


def _fixed_batch(model: Model) -> int:
    dim = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else 1
    return dim if isinstance(dim, int) and dim > 0 else 1
