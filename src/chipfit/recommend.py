"""``chipfit recommend``: which hardware fits a model best under the SLA — measured on this machine, predicted
on every catalogue target — ranked by cost (or latency, energy).

This machine's row comes from ``fit`` (measured). For every other target the variants ``fit`` found to meet
the quality bound (quality does not depend on the hardware) are combined with the backends that target
runs and a set of batch sizes, and their p50/p99 are *predicted* (roofline × the correction learned from the
store's measurements), with the predictor's held-out error as the expected error. Per target the best
configuration by the objective among those meeting the bounds is shown; instances needed for
``--min-throughput``, $/1M inferences and modelled energy follow from the predicted throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chipfit.hardware.catalog import Target, load_catalog
from chipfit.hardware.cost import cost_energy

__all__ = ["Recommendation", "recommend"]

_OBJECTIVE_KEY = {"cost": "usd_per_1m", "latency": "p50_ms", "energy": "energy_mj", "throughput": "neg_throughput"}


@dataclass
class Recommendation:
    targets: list[dict[str, Any]]
    objective: str
    spec: dict[str, Any]
    fit: Any  # the local FitResult
    predictor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "spec": self.spec, "predictor": self.predictor, "targets": self.targets}


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
        "variant": "+".join(p["name"] for p in cand["passes"]) or "original",
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
    **constraints: Any,
) -> Recommendation:
    """Rank catalogue targets for ``model``: this machine measured (via ``fit``), the others predicted."""
    from chipfit.errors import SpecError
    from chipfit.hardware.local import local_target
    from chipfit.pipeline import fit
    from chipfit.predict import Predictor, model_info, predict_eval, training_rows
    from chipfit.store import Store

    cat = load_catalog(catalog)
    unknown = [t for t in targets if t not in cat]
    if unknown:
        raise SpecError(f"--targets: unknown target(s) {unknown}. See `chipfit targets` for the names.")
    kw = dict(fit_kwargs or {})
    fit_objective = objective if objective in ("cost", "latency", "energy", "throughput") else "cost"
    result = fit(model, data, objective=fit_objective, **constraints, **kw)
    spec = result.spec
    store = kw.get("store") if isinstance(kw.get("store"), Store) else Store(kw.get("store"))
    rows = training_rows(store)
    predictor = Predictor().fit(rows)
    evaluation = predict_eval(rows) if rows else {"n": 0}
    predictor.rel_error = evaluation.get("median_ape") or math.inf
    info = model_info(result.model.stats)
    local, match = local_target()
    out: list[dict[str, Any]] = []
    # this machine: the measured winner (or nearest miss), exactly as fit measured it
    best = result.winner or (result.near_misses[0] if result.near_misses else None)
    if best is not None:
        row = _row(local, best.candidate.to_dict(), best.metric("p50_ms"), best.metric("p99_ms"), spec, min_throughput)
        row.update(source="measured", expected_error=0.0, meets=row["meets"] and best.feasible, basis=match["how"])
        out.append(row)
    quality_ok = {}
    for r in result.candidates:  # variants whose quality met the bound here (quality does not depend on the chip)
        if r.measurement.ok and not any(v.constraint in ("max_accuracy_drop", "min_fidelity") for v in r.violations):
            quality_ok[r.candidate.pass_label()] = list(r.candidate.passes)
    # predict only at batch sizes measured here: the correction is not extrapolated beyond them
    batches = sorted({r.candidate.batch for r in result.candidates if r.measurement.ok}) or [1]
    chosen = [cat[t] for t in targets] if targets else list(cat.values())
    for target in chosen:
        items = [
            (info, {"backend": b, "passes": passes, "options": opts, "batch": batch}, target)
            for passes in quality_ok.values()
            for b, opts in _backends_for(target)
            for batch in batches
            if not (b == "openvino" and target.arch not in ("x86_64", "aarch64"))
        ]
        preds = predictor.predict_many(items)
        candidates = [
            _row(target, item[1], p.p50_ms, p.p99_ms, spec, min_throughput) | {"basis": p.basis}
            for item, p in zip(items, preds, strict=True)
        ]
        if not candidates:
            continue
        fits_memory = info["param_bytes"] / 2**30 * 3 < target.memory_gb
        meeting = [c for c in candidates if c["meets"]]
        pick = min(meeting or candidates, key=lambda c: _objective_value(c, objective))
        transfer = "calibrated on this machine's measurements; not validated on this target"
        pick.update(
            source="predicted",
            expected_error=predictor.rel_error,
            meets=pick["meets"] and fits_memory,
            basis=f"{pick['basis']}; {transfer}" + ("" if not target.gpu else "; GPU: CPU-trained correction"),
        )
        out.append(pick)
    out.sort(key=lambda r: (not r["meets"], _objective_value(r, objective)))
    summary = {k: evaluation.get(k) for k in ("n", "models", "within_10pct", "median_ape", "spearman")}
    return Recommendation(out, objective, spec.model_dump(), result, {**summary, "trained_on": predictor.n_train})
