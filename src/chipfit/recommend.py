"""``chipfit recommend``: which hardware fits a model best under the SLA — measured on this machine, predicted
on every catalogue target — ranked by cost (or latency, energy).

This machine's row comes from ``fit`` (measured). For every other target the variants ``fit`` found to meet
the quality bound (quality does not depend on the hardware) are combined with the backends that target
runs and a set of batch sizes, and their p50/p99 are *predicted* (roofline × the correction learned from the
store's measurements), with the predictor's held-out error as the expected error. Per target the best
configuration by the objective among those meeting the bounds is shown; instances needed for
``--min-throughput``, $/1M inferences and modelled energy follow from the predicted throughput.

On the catalogue target that is this machine's CPU (at most as many threads as this machine's quota), ONNX
Runtime rows are predicted from their kernels when ``chipfit predict calibrate`` has measured this machine
(the kernel-level predictor, with its own held-out error), else as above.

With ``farm=ADDRESS`` the targets present in the farm are measured on their nodes (``farm_fit``): ``measured``
where the node detected its target, ``declared`` where it only declared it (``farm join --as``: never that
hardware's numbers). The predictor is trained with the detected nodes' measurements too, and per farm target its
median absolute error against the farm's measurements of the same candidates is reported.

A sanity rule bounds the learned correction: a target whose peak compute (every dtype) and memory bandwidth are
all at most this machine's detected target at its CPU quota is never predicted faster than what was measured
here at the same variant and batch; such a prediction is raised to the measurement and the row says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.hardware.catalog import Target, load_catalog
from chipfit.hardware.cost import cost_energy

__all__ = [
    "Recommendation",
    "advantage",
    "clamp",
    "dominated",
    "measured_floor",
    "quota_reference",
    "recommend",
]

_OBJECTIVE_KEY = {"cost": "usd_per_1m", "latency": "p50_ms", "energy": "energy_mj", "throughput": "neg_throughput"}


@dataclass
class Recommendation:
    targets: list[dict[str, Any]]
    objective: str
    spec: dict[str, Any]
    fit: Any  # the local FitResult
    predictor: dict[str, Any] = field(default_factory=dict)
    basis: dict[str, str] = field(default_factory=dict)  # said once: this machine, predictions, error bars, clamp
    farm: dict[str, Any] = field(default_factory=dict)  # with --farm: its address, and per target nodes and error

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: an unknown error (an unvalidated predictor's, infinite here) or a NaN is null."""
        return _finite(
            {
                "objective": self.objective,
                "spec": self.spec,
                "predictor": self.predictor,
                "basis": self.basis,
                "targets": self.targets,
                **({"farm": self.farm} if self.farm else {}),
            }
        )


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _backends_for(target: Target) -> list[tuple[str, dict[str, Any]]]:
    """The (backend, options) a target would run, as far as chipfit's backends reach it."""
    if target.gpu:
        return [("onnxruntime", {"provider": "cuda"}), ("onnxruntime", {"provider": "tensorrt"})]
    out = [("onnxruntime", {"graph_optimization_level": "all", "intra_op_num_threads": target.threads or target.cores})]
    out.append(("openvino", {"hint": "LATENCY", "threads": target.threads or target.cores}))
    if target.tvm:
        out.append(("tvm", {"threads": target.threads or target.cores, "tune_trials": 64}))
    return out


def _row(
    target: Target, cand: dict[str, Any], p50: float, p99: float, spec: Any, min_thr: float | None
) -> dict[str, Any]:
    batch = int(cand["batch"])
    thr = batch / p50 * 1e3
    ce = cost_energy({"throughput": thr}, target, cand["options"])
    instances = max(1, math.ceil(min_thr / thr)) if min_thr else 1
    checks = {
        "max_p50_ms": p50,
        "max_p99_ms": p99,
        "max_cost_per_1m": ce["usd_per_1m"],
        "max_energy_mj": ce["energy_mj"],
    }
    violations = [k for k, v in checks.items() if getattr(spec, k, None) is not None and v > getattr(spec, k)]
    return {
        "name": target.name,
        "title": target.title,
        "kind": target.kind,
        "backend": cand["backend"],
        "variant": _variant(cand),
        "options": cand["options"],
        "batch": batch,
        "p50_ms": p50,
        "p99_ms": p99,
        "throughput": thr,
        "instances": instances,
        "usd_per_hour": target.usd_per_hour * instances,
        "usd_per_1m": ce["usd_per_1m"],
        "energy_mj": ce["energy_mj"],
        "energy_method": ce["energy_method"],
        "meets": not violations,
        "violations": violations,
        "price": dict(target.price),
    }


def _objective_value(row: dict[str, Any], objective: str) -> float:
    if objective == "throughput":
        return -row["throughput"]
    return float(row[_OBJECTIVE_KEY.get(objective, "usd_per_1m")])


def recommend(
    model: Any,
    data: Any,
    *,
    targets: tuple[str, ...] = (),
    catalog: tuple[str, ...] = (),
    min_throughput: float | None = None,
    objective: str = "cost",
    fit_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    farm: str | None = None,
    **constraints: Any,
) -> Recommendation:
    """Rank catalogue targets for ``model``: this machine measured (via ``fit``), the others predicted; with
    ``farm`` (a farm's address, host:port) the targets present in the farm measured on their nodes.
    ``progress`` is called with one line per phase (and per target predicted)."""
    from chipfit.errors import SpecError
    from chipfit.farm.predict import farm_error, farm_targets, farm_training_rows
    from chipfit.hardware.local import local_target
    from chipfit.pipeline import fit
    from chipfit.predict import Predictor, model_info, predict_eval, training_rows
    from chipfit.predict.local import kernel_error_basis, kernel_prediction, local_kernels
    from chipfit.store import Store

    say = progress or (lambda _line: None)
    cat = load_catalog(catalog)
    unknown = [t for t in targets if t not in cat]
    if unknown:
        raise SpecError(f"--targets: unknown target(s) {unknown}. See `chipfit targets` for the names.")
    kw = dict(fit_kwargs or {})
    fit_objective = objective if objective in ("cost", "latency", "energy", "throughput") else "cost"
    if isinstance(model, str | Path) and not Path(model).exists():  # the user's input before any phase starts
        from chipfit.errors import ModelError

        raise ModelError(f"Model file '{model}' does not exist. Pass the path of an .onnx or .pt2 file.")
    on_farm = farm_targets(farm, targets, cat) if farm is not None else []  # an unreachable farm: FarmError at once
    say("profiling: measuring candidates on this machine")
    store = kw.get("store") if isinstance(kw.get("store"), Store) else Store(kw.get("store"))
    kw["store"] = store
    result = fit(model, data, objective=fit_objective, **constraints, **kw)
    spec = result.spec
    farmed = None
    if farm is not None and on_farm:
        from chipfit.farm.fit import farm_fit

        say(f"measuring on the farm at {farm}: {', '.join(on_farm)}")
        farm_kw = {k: kw[k] for k in ("space", "settings", "home") if kw.get(k) is not None}
        budget = {"time_budget": kw["time_budget"]} if kw.get("time_budget") else {}
        farmed = farm_fit(
            model, data, address=farm, targets=on_farm, store=store, progress=say, objective=fit_objective,
            **farm_kw, **budget, **constraints,
        )  # fmt: skip
    say("reading the store's measurements (and this machine's peak rates)")
    local, match = local_target()
    rows = farm_training_rows(training_rows(store, local), cat)
    say(f"training the predictor on {len(rows)} measurements")
    predictor = Predictor().fit(rows)
    n_models = len({r["model_hash"] for r in rows})
    if n_models >= 2:
        say(f"evaluating the predictor on held-out models ({n_models} models)")
    evaluation = (
        predict_eval(rows, progress=lambda i, k: say(f"held-out fold trained and scored ({i}/{k})"))
        if rows
        else {"n": 0}
    )
    predictor.rel_error = evaluation.get("median_ape") or math.inf
    info = model_info(result.model.stats)
    ref = quota_reference(local, cat.get(match.get("match") or ""))
    floor = measured_floor(result.candidates)
    kernel = local_kernels(result, data, kw)
    out: list[dict[str, Any]] = []
    # this machine: the measured winner (or nearest miss), exactly as fit measured it
    best = result.winner or (result.near_misses[0] if result.near_misses else None)
    if best is not None:
        row = _row(local, best.candidate.to_dict(), best.metric("p50_ms"), best.metric("p99_ms"), spec, min_throughput)
        row.update(source="measured", expected_error=0.0, meets=row["meets"] and best.feasible)
        row.update(basis="measured here", error_basis="measured here", clamped="")
        out.append(row)
    quality_ok = {}
    for r in result.candidates:  # variants whose quality met the bound here (quality does not depend on the chip)
        if r.measurement.ok and not any(v.constraint in ("max_accuracy_drop", "min_fidelity") for v in r.violations):
            quality_ok[r.candidate.pass_label()] = list(r.candidate.passes)
    # predict only at batch sizes measured here: the correction is not extrapolated beyond them
    batches = sorted({r.candidate.batch for r in result.candidates if r.measurement.ok}) or [1]
    chosen = (
        [cat[t] for t in targets if t not in on_farm] if targets else [t for t in cat.values() if t.name not in on_farm]
    )
    error_basis = _error_basis(evaluation, predictor)
    farm_info: dict[str, Any] = {}
    if farmed is not None:
        farm_info = {"address": farm, "targets": {}}
        for name, tr in farmed.targets.items():
            errors = farm_error(predictor, info, cat[name], tr.fit.candidates)
            farm_info["targets"][name] = {"declared": tr.declared, "nodes": sorted(set(tr.nodes.values()))} | errors
            measured_row = farm_row(cat[name], tr, spec, min_throughput)
            if measured_row is not None:
                out.append(measured_row | {"predictor_error": errors})
    for i, target in enumerate(chosen, 1):
        say(f"predicting {target.name} ({i}/{len(chosen)})")
        items = [
            (info, {"backend": b, "passes": passes, "options": opts, "batch": batch}, target)
            for passes in quality_ok.values()
            for b, opts in _backends_for(target)
            for batch in batches
            if not (b == "openvino" and target.arch not in ("x86_64", "aarch64"))
        ]
        preds = predictor.predict_many(items)
        if kernel is not None and target.name == match.get("match") and (target.threads or target.cores) <= local.cores:
            preds = [kernel_prediction(kernel, item[1], p) for item, p in zip(items, preds, strict=True)]
        adv = None if target.gpu else advantage(target, ref)  # a CPU target at most `adv` x this machine
        candidates = []
        for item, p in zip(items, preds, strict=True):
            p50, p99, note = (p.p50_ms, p.p99_ms, "") if adv is None else clamp(p.p50_ms, p.p99_ms, item[1], floor, adv)
            kernel_level = p.basis.startswith("kernel-level")
            row = _row(target, item[1], p50, p99, spec, min_throughput)
            candidates.append(row | {"clamped": note, "kernel_level": kernel_level, "rel_error": p.rel_error})
        if not candidates:
            continue
        fits_memory = info["param_bytes"] / 2**30 * 3 < target.memory_gb
        meeting = [c for c in candidates if c["meets"]]
        pick = min(meeting or candidates, key=lambda c: _objective_value(c, objective))
        tag = "roofline × correction" if predictor.trained else "roofline × 3"
        tag = "kernel-level (calibrated on this machine)" if pick.pop("kernel_level") else tag
        rel_error = pick.pop("rel_error")
        tag += ", GPU" if target.gpu else ""
        tag += ", clamped" if pick["clamped"] else ""
        pick.update(
            source="predicted",
            expected_error=rel_error,
            error_basis=error_basis if rel_error == predictor.rel_error else kernel_error_basis(rel_error),
            meets=pick["meets"] and fits_memory,
            basis=tag,
        )
        out.append(pick)
    out.sort(key=lambda r: (not r["meets"], _objective_value(r, objective)))
    summary = {k: evaluation.get(k) for k in ("n", "models", "within_10pct", "median_ape", "spearman")}
    basis = {
        "this_machine": f"{local.title.removeprefix('this machine: ')}; {match['how']}",
        "predicted": (
            f"roofline × the correction learned from {predictor.n_train} measurements of this machine"
            if predictor.trained
            else "roofline × 3 (too few measurements to learn a correction)"
        )
        + "; not validated on the other targets (on a GPU: a correction learned on CPUs)",
        "error": error_basis,
        "clamp": (
            f"a CPU target with at most k times this machine's peak compute (every dtype) and memory bandwidth "
            f"({ref['name']} at {local.cores} cores in the CPU quota) is never predicted more than k times faster "
            "than measured here (k ≤ 1: never faster)"
        ),
    }
    if farm_info:
        basis["farm"] = (
            f"measured on the farm at {farm}'s nodes of each target present ('declared': the node only declared its "
            "target with --as, not that hardware's numbers); predictor error per farm target: median absolute error "
            "of the prediction against the farm's measurement of the same candidates (detected nodes' measurements "
            "also train the predictor)"
        )
    dumped = spec.model_dump() | {"min_throughput": min_throughput}
    summary = {**summary, "trained_on": predictor.n_train}
    if farm_info:
        summary["farm_error"] = {
            t: {k: v[k] for k in ("n", "median_ape", "declared")} for t, v in farm_info["targets"].items()
        }
    return Recommendation(out, objective, dumped, result, summary, basis, farm_info)


def farm_row(target: Target, tr: Any, spec: Any, min_throughput: float | None) -> dict[str, Any] | None:
    """A farm target's row: its winner (or nearest miss) as measured on its nodes; None when nothing measured."""
    fit_result = tr.fit
    best = fit_result.winner or (fit_result.near_misses[0] if fit_result.near_misses else None)
    if best is None:
        return None
    cand = best.candidate.to_dict()
    row = _row(target, cand, best.metric("p50_ms"), best.metric("p99_ms"), spec, min_throughput)
    how = "declared" if tr.declared else "measured"
    node = tr.nodes.get(best.candidate.id, "")
    said = "a node that only declared it (--as): not that hardware" if tr.declared else "a node of that target"
    row.update(source=how, expected_error=0.0, meets=row["meets"] and best.feasible, clamped="", node=node)
    row.update(basis=f"measured on the farm ({said})", error_basis=f"measured on the farm, on {said}")
    return row


def _error_basis(evaluation: dict[str, Any], predictor: Any) -> str:
    """What a predicted row's error bar is based on, in words."""
    if evaluation.get("n"):
        return (
            f"±{evaluation['median_ape']:.0%}: median error of the predictor on {evaluation['models']} held-out "
            f"models of this store ({evaluation['n']} measurements, grouped k-fold)"
        )
    how = "roofline × learned correction" if predictor.trained else "roofline only"
    return f"no held-out evaluation (needs measurements of two models): {how}"


def quota_reference(local: Target, match: Target | None) -> dict[str, Any]:
    """This machine's detected target at its CPU quota: per dtype the higher of its measured rate and its matched
    catalogue entry's rate scaled to the cores in the quota (a busy machine measures below its hardware)."""
    scale = local.cores / float(match.threads or match.cores) if match else 1.0
    dtypes = set(local.peak_gflops) | set(match.peak_gflops if match else {})
    peaks = {d: max(local.peak(d), match.peak(d) * scale if match else 0.0) for d in dtypes}
    bw = max(local.mem_bw_gbs, match.mem_bw_gbs * scale if match else 0.0)
    return {"name": match.name if match else local.name, "scale": scale, "peak_gflops": peaks, "mem_bw_gbs": bw}


def dominated(target: Target, ref: dict[str, Any]) -> bool:
    """Whether ``target``'s peak compute for every dtype and its memory bandwidth are all at most ``ref``'s."""
    if target.gpu:
        return False
    peaks = ref["peak_gflops"]
    dtypes = set(target.peak_gflops) | set(peaks)
    ref_peak = {d: float(peaks.get(d, peaks["fp32"])) for d in dtypes}
    return all(target.peak(d) <= ref_peak[d] for d in dtypes) and target.mem_bw_gbs <= float(ref["mem_bw_gbs"])


def advantage(target: Target, ref: dict[str, Any]) -> float:
    """The most ``target`` has of any resource relative to ``ref``: the largest ratio of its peak compute (per
    dtype) and memory bandwidth to ``ref``'s. At most 1 when ``target`` is dominated (see :func:`dominated`)."""
    peaks = ref["peak_gflops"]
    dtypes = set(target.peak_gflops) | set(peaks)
    ratios = [target.peak(d) / float(peaks.get(d, peaks["fp32"])) for d in dtypes]
    ratios.append(target.mem_bw_gbs / float(ref["mem_bw_gbs"]))
    return max(ratios)


def measured_floor(candidates: list[Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """The fastest (p50, p99) measured here per (variant, batch), and per ("*", batch) over every variant."""
    floor: dict[tuple[str, int], tuple[float, float]] = {}
    for r in candidates:
        if not r.measurement.ok or not r.metric("p50_ms"):
            continue
        cand = r.candidate.to_dict()
        p50, p99 = float(r.metric("p50_ms")), float(r.metric("p99_ms") or r.metric("p50_ms"))
        for key in ((_variant(cand), int(cand["batch"])), ("*", int(cand["batch"]))):
            if key not in floor or p50 < floor[key][0]:
                floor[key] = (p50, p99)
    return floor


def clamp(
    p50: float,
    p99: float,
    cand: dict[str, Any],
    floor: dict[tuple[str, int], tuple[float, float]],
    advantage: float = 1.0,
) -> tuple[float, float, str]:
    """A CPU target's prediction raised to what was measured here at the same variant and batch (or any variant
    at that batch) divided by ``advantage`` (the most it has of any resource relative to this machine; a
    dominated target, ``advantage`` ≤ 1, is never faster than the measurement): (p50, p99, note; empty when
    nothing was raised)."""
    batch = int(cand["batch"])
    hit = floor.get((_variant(cand), batch)) or floor.get(("*", batch))
    k = max(float(advantage), 1.0)
    if hit is None or p50 >= hit[0] / k:
        return p50, p99, ""
    lo50, lo99 = hit[0] / k, hit[1] / k
    if k == 1.0:
        note = (
            f"clamped: predicted {p50:.4g} ms < {hit[0]:.4g} ms measured here at batch {batch}, on a target no "
            "faster than this machine; raised to the measurement"
        )
    else:
        note = (
            f"clamped: predicted {p50:.4g} ms < {hit[0]:.4g} ms measured here at batch {batch} / {k:.3g}, on a "
            f"target with at most {k:.3g}x this machine's compute and bandwidth; raised to that bound"
        )
    return lo50, max(p99, lo99, lo50), note


def _variant(cand: dict[str, Any]) -> str:
    return "+".join(p["name"] for p in cand["passes"]) or "original"
