"""What the dashboard's pages show, derived from a job's result JSON (the same JSON as ``fit --json``, a farm fit's
per-target result, or ``recommend --json``): plain dicts and lists for the templates, no HTML here.

A job's result comes in three shapes; :func:`sections` turns each into one section per target (its candidates,
winner and Pareto front), and :func:`target_rows` into the per-target comparison (p50/p99/$ per 1M/energy, measured
or predicted). :func:`compare_rows` lays several finished jobs side by side for the compare page.
"""

from __future__ import annotations

import math
from typing import Any

from chipfit.candidate import Candidate
from chipfit.report.plots import compact_number

__all__ = [
    "CANDIDATE_COLUMNS",
    "candidate_rows",
    "compare_rows",
    "fmt",
    "quality_of",
    "sections",
    "spec_text",
    "target_rows",
    "variant_of",
]

# (key, header, tooltip) of the candidate table; every key is a cell value in candidate_rows' dicts
CANDIDATE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("variant", "variant", "passes applied to the graph"),
    ("backend", "backend", "runtime that ran it"),
    ("options", "options", "runtime options"),
    ("batch", "batch", "batch size"),
    ("status", "status", "ok, pruned, failed, timeout, oom or skipped"),
    ("p50_ms", "p50 ms", "median latency at this batch size"),
    ("p99_ms", "p99 ms", "99th-percentile latency"),
    ("predicted_p50_ms", "predicted p50", "the predictor's p50 before measuring (when it ordered the search)"),
    ("throughput", "samples/s", "single-stream throughput"),
    ("peak_memory_mb", "peak MB", "memory the model adds to its process"),
    ("usd_per_1m", "$ / 1M", "dollars per million inferences at this throughput"),
    ("energy_mj", "mJ", "energy per inference"),
    ("quality", "quality", "accuracy against the labels, else fidelity to the original's outputs"),
    ("feasible", "feasible", "meets every constraint"),
)


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: ``digits`` significant digits, thousands separated, '–' for nothing."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:,.0f}" if abs(v) >= 10**digits else compact_number(v, digits)  # 53,618; 0.0162; 2.82e-5
    return str(v)


_SPEC_LABELS = {
    "max_p50_ms": ("p50 ≤ ", " ms"),
    "max_p99_ms": ("p99 ≤ ", " ms"),
    "min_throughput": ("≥ ", "/s"),
    "max_memory_mb": ("memory ≤ ", " MB"),
    "max_size_mb": ("size ≤ ", " MB"),
    "max_accuracy_drop": ("accuracy drop ≤ ", ""),
    "min_fidelity": ("fidelity ≥ ", ""),
    "max_cost_per_1m": ("$/1M ≤ ", ""),
    "max_energy_mj": ("energy ≤ ", " mJ"),
}


def spec_text(spec: dict[str, Any]) -> str:
    """A job's constraints in a few words, as submitted: 'p99 ≤ 5 ms, accuracy drop ≤ 0.01 · latency · 30s'."""
    bounds = [f"{a}{v}{b}" for k, (a, b) in _SPEC_LABELS.items() if (v := spec.get(k)) not in (None, "")]
    parts = [", ".join(bounds) or "no bounds"]
    if spec.get("objective"):
        parts.append(str(spec["objective"]))
    if spec.get("time_budget") not in (None, ""):
        budget = spec["time_budget"]
        parts.append(f"{budget:g} s" if isinstance(budget, (int, float)) else str(budget))
    return " · ".join(parts)


def _candidate(c: dict[str, Any]) -> Candidate | None:
    """The candidate a result row describes (its own fields), or None for a row without them (a recommendation)."""
    if "backend" not in c or "passes" not in c:
        return None
    try:
        return Candidate(
            backend=str(c["backend"]),
            passes=tuple(c.get("passes") or ()),
            options=dict(c.get("options") or {}),
            target=str(c.get("target") or "cpu"),
            batch=int(c.get("batch") or 1),
        )
    except (TypeError, ValueError):
        return None


def variant_of(c: dict[str, Any]) -> str:
    """The passes applied ('int8_dynamic+ort_graph_opt(basic)', 'default', 'as given'), as in the label."""
    cand = _candidate(c)
    if cand is not None:
        return cand.pass_label()
    return str(c.get("variant") or "as given")


def _options_of(c: dict[str, Any]) -> str:
    """The runtime options ('2t seq', 'backend defaults'), with the device when it is not the CPU."""
    cand = _candidate(c)
    if cand is None:
        return ", ".join(f"{k}={v}" for k, v in sorted((c.get("options") or {}).items())) or "defaults"
    device = "" if cand.target == "cpu" else f"@{cand.target} "
    return device + cand.option_label()


def quality_of(c: dict[str, Any]) -> tuple[str | None, float | None]:
    """(metric name, value): accuracy against the labels when measured, else fidelity."""
    q = c.get("quality") or {}
    if q.get("accuracy") is not None:
        return str(q.get("accuracy_metric") or "accuracy"), float(q["accuracy"])
    if q.get("fidelity") is not None:
        return str(q.get("fidelity_metric") or "fidelity"), float(q["fidelity"])
    return None, None


OPTIONAL_COLUMNS = ("predicted_p50_ms", "usd_per_1m", "energy_mj", "quality")  # shown when some row has one


def candidate_rows(
    candidates: list[dict[str, Any]], winner_id: str | None, pareto_ids: set[str], partial: bool = False
) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The columns that have a value somewhere, and one row per candidate: display text and a sort key per
    column. ``partial``: a running job's candidates, whose constraints are checked only at the end (no verdict)."""
    rows = []
    values_of = []
    for c in candidates:
        qname, qvalue = quality_of(c)
        metrics = c.get("metrics") or {}
        values: dict[str, Any] = {
            "variant": variant_of(c),
            "backend": c.get("backend"),
            "options": _options_of(c),
            "batch": c.get("batch"),
            "status": c.get("status"),
            "p50_ms": c.get("p50_ms"),
            "p99_ms": c.get("p99_ms"),
            "predicted_p50_ms": metrics.get("predicted_p50_ms"),
            "throughput": c.get("throughput"),
            "peak_memory_mb": c.get("peak_memory_mb"),
            "usd_per_1m": c.get("usd_per_1m"),
            "energy_mj": c.get("energy_mj"),
            "quality": qvalue,
            "feasible": None if partial else c.get("feasible"),
        }
        values_of.append(values)
        why = "; ".join(v.get("text", "") for v in c.get("violations") or []) or (c.get("error") or "")
        rows.append(
            {
                "id": c.get("id"),
                "winner": c.get("id") == winner_id,
                "pareto": c.get("id") in pareto_ids,
                "ok": c.get("status") in ("ok", "pruned"),
                "why": why,
                "quality_name": qname,
            }
        )
    columns = [
        col
        for col in CANDIDATE_COLUMNS
        if col[0] not in OPTIONAL_COLUMNS or any(v[col[0]] is not None for v in values_of)
    ]
    for row, values in zip(rows, values_of, strict=True):
        row["cells"] = [(key, fmt(values[key]), _sort_key(values[key])) for key, _, _ in columns]
    return columns, rows


def _sort_key(v: Any) -> str:
    """What the table's sort compares: numbers as numbers, text as text, nothing last (see dashboard.js)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(v) if isinstance(v, (int, float)) else str(v)


def _bounds(spec: dict[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (spec or {}).items():
        if k.startswith(("max_", "min_")) and v is not None:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):  # a running job's request as submitted: left to the job to validate
                continue
    return out


def sections(
    kind: str, result: dict[str, Any] | None, spec: dict[str, Any] | None = None, partial: bool = False
) -> list[dict[str, Any]]:
    """One section per target: name, how it was measured, candidates, winner, Pareto ids, the spec's bounds
    (the result's spec, else ``spec``: a running job's request). ``partial``: a running job's candidates so far."""
    if not result:
        return []
    spec = result.get("spec") or spec
    if kind == "recommend" or isinstance(result.get("targets"), list):
        return []  # a recommendation has one row per target and no candidate list (see target_rows)
    if isinstance(result.get("targets"), dict):  # a farm fit: {target: per-target result}
        out = []
        for name, t in result["targets"].items():
            out.append(_section(name, t.get("how", "measured"), t, spec or t.get("spec"), partial))
        return out
    return [_section("this machine", "measured", result, spec, partial)]


def _section(
    name: str, how: str, r: dict[str, Any], spec: dict[str, Any] | None, partial: bool = False
) -> dict[str, Any]:
    winner = r.get("winner")
    pareto = r.get("pareto") or []
    candidates = r.get("candidates") or []
    measured = [c for c in candidates if c.get("status") not in ("skipped",)]
    skipped = [c for c in candidates if c.get("status") == "skipped"]
    reasons: dict[str, int] = {}
    for c in skipped:
        reasons[c.get("error") or "no reason given"] = reasons.get(c.get("error") or "no reason given", 0) + 1
    pareto_ids = {str(p.get("id")) for p in pareto}
    ref: dict[str, Any] = r.get("reference") or next((c for c in measured if c.get("reference")), {})
    columns, rows = candidate_rows(measured, winner.get("id") if winner else None, pareto_ids, partial)
    return {
        "name": name,
        "how": how,
        "winner": winner,
        "reference": ref,
        "candidates": measured,
        "columns": columns,
        "rows": rows,
        "pareto_ids": pareto_ids,
        "skipped": sorted(reasons.items(), key=lambda kv: -kv[1]),
        "near_misses": r.get("near_misses") or [],
        "bounds": _bounds(spec),
        "notes": r.get("notes") or [],
        "partial": partial,
    }


def target_rows(kind: str, result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-target comparison: each target's best (winner, or the recommendation's pick) with p50, p99,
    $ per 1M, energy, whether it was measured or predicted, and how far the prediction was from the measurement."""
    if not result:
        return []
    if isinstance(result.get("targets"), list):  # recommend
        return [
            {
                "target": t.get("name"),
                "title": t.get("title") or "",
                "source": t.get("source") or "predicted",
                "variant": t.get("variant") or "",
                "backend": t.get("backend") or "",
                "batch": t.get("batch"),
                "p50_ms": t.get("p50_ms"),
                "p99_ms": t.get("p99_ms"),
                "usd_per_1m": t.get("usd_per_1m"),
                "energy_mj": t.get("energy_mj"),
                "predicted_p50_ms": None,
                "error": t.get("expected_error"),
                "error_text": _expected_error_text(t),
                "meets": bool(t.get("meets")),
                "why": ", ".join(t.get("violations") or []),
            }
            for t in result["targets"]
        ]
    rows = []
    for s in sections(kind, result):
        w = s["winner"]
        if w is None:
            rows.append({"target": s["name"], "title": "", "source": s["how"], "meets": False, "why": "no winner"})
            continue
        predicted = (w.get("metrics") or {}).get("predicted_p50_ms")
        p50 = w.get("p50_ms")
        err = abs(p50 - predicted) / p50 if predicted and p50 else None
        rows.append(
            {
                "target": s["name"],
                "title": "",
                "source": s["how"],
                "variant": variant_of(w),
                "backend": w.get("backend") or "",
                "batch": w.get("batch"),
                "p50_ms": p50,
                "p99_ms": w.get("p99_ms"),
                "usd_per_1m": w.get("usd_per_1m"),
                "energy_mj": w.get("energy_mj"),
                "predicted_p50_ms": predicted,
                "error": err,
                "error_text": f"{100 * err:.0f}% off" if err is not None else "",
                "meets": True,
                "why": "",
            }
        )
    return rows


def _expected_error_text(t: dict[str, Any]) -> str:
    """A recommendation row's error: none for a measured row, else the predictor's expected error (or why not)."""
    if t.get("source") == "measured":
        return ""
    err = t.get("expected_error")
    if not isinstance(err, (int, float)) or not math.isfinite(err):
        return "not validated"
    return f"±{100 * err:.0f}%"


def compare_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several finished jobs side by side: one row per (job, target, variant) with the model's name, the best
    candidate of each variant (lowest p50 among measured ones) and its cost, energy and quality."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        kind, result = str(job.get("kind") or "fit"), job.get("result") or {}
        model = job.get("model_name") or job.get("model") or ""
        if isinstance(result.get("targets"), list):
            for t in target_rows(kind, result):
                rows.append({"job": job.get("id"), "model": model, **t, "quality": None, "quality_name": None})
            continue
        for s in sections(kind, result):
            best: dict[str, dict[str, Any]] = {}
            for c in s["candidates"]:
                if c.get("status") != "ok" or c.get("p50_ms") is None:
                    continue
                key = f"{variant_of(c)} · {c.get('backend')}"
                if key not in best or c["p50_ms"] < best[key]["p50_ms"]:
                    best[key] = c
            for c in sorted(best.values(), key=lambda c: c["p50_ms"]):
                qname, qvalue = quality_of(c)
                rows.append(
                    {
                        "job": job.get("id"),
                        "model": model,
                        "target": s["name"],
                        "source": c.get("source") or s["how"],
                        "variant": variant_of(c),
                        "backend": c.get("backend"),
                        "batch": c.get("batch"),
                        "p50_ms": c.get("p50_ms"),
                        "p99_ms": c.get("p99_ms"),
                        "usd_per_1m": c.get("usd_per_1m"),
                        "energy_mj": c.get("energy_mj"),
                        "quality": qvalue,
                        "quality_name": qname,
                        "meets": bool(c.get("feasible")),
                        "winner": bool(s["winner"] and s["winner"].get("id") == c.get("id")),
                    }
                )
    return rows
