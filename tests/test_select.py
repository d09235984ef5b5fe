"""Selection on measured values: each constraint, each objective, Pareto, near-misses."""

from __future__ import annotations

import pytest

from chipfit.measure.measurement import Measurement
from chipfit.search.select import CandidateResult, choose_winner, evaluate, near_misses, pareto_front
from chipfit.search.space import Candidate
from chipfit.spec import CONSTRAINTS, load_spec


def _r(name: str, reference: bool = False, status: str = "ok", **metrics: float) -> CandidateResult:
    base = {
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "throughput": 1000.0,
        "peak_memory_mb": 50.0,
        "size_mb": 10.0,
        "accuracy": 0.9,
        "accuracy_metric": "top1",
        "fidelity": 0.999,
    }
    return CandidateResult(
        Candidate("onnxruntime", options={"name": name}, reference=reference), Measurement(status, {**base, **metrics})
    )


# (constraint, bound, a value that passes, a value that fails); accuracy_drop is derived from accuracy
CASES = [
    ("max_p50_ms", 2.0, {"p50_ms": 1.5}, {"p50_ms": 3.0}),
    ("max_p99_ms", 5.0, {"p99_ms": 4.0}, {"p99_ms": 6.0}),
    ("min_throughput", 500.0, {"throughput": 600.0}, {"throughput": 400.0}),
    ("max_memory_mb", 100.0, {"peak_memory_mb": 80.0}, {"peak_memory_mb": 120.0}),
    ("max_size_mb", 5.0, {"size_mb": 4.0}, {"size_mb": 6.0}),
    ("max_accuracy_drop", 0.01, {"accuracy": 0.895}, {"accuracy": 0.85}),
    ("min_fidelity", 0.99, {"fidelity": 0.995}, {"fidelity": 0.95}),
    # cost and energy follow from the throughput on this machine's catalogue match: extreme rates on purpose
    ("max_cost_per_1m", 1.0, {"throughput": 1e6}, {"throughput": 1e-3}),
    ("max_energy_mj", 1.0, {"throughput": 1e6}, {"throughput": 1e-3}),
]


def test_cases_cover_every_constraint() -> None:
    assert {c[0] for c in CASES} == set(CONSTRAINTS)


@pytest.mark.parametrize(("name", "bound", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_each_constraint(name: str, bound: float, good: dict, bad: dict) -> None:
    results = [_r("ref", reference=True), _r("good", **good), _r("bad", **bad)]
    evaluate(results, load_spec(None, **{name: bound}))
    ok, miss = results[1], results[2]
    assert ok.feasible
    assert not miss.feasible and [v.constraint for v in miss.violations] == [name]
    v = miss.violations[0]
    assert v.excess is not None and v.excess > 0
    assert v.relative == pytest.approx(v.excess / bound)


@pytest.mark.parametrize(
    ("objective", "winner"),
    [("latency", "fast"), ("throughput", "wide"), ("memory", "small"), ("size", "tiny"), ("accuracy", "exact")],
)
def test_each_objective_picks_one_winner(objective: str, winner: str) -> None:
    results = [
        _r("fast", p50_ms=0.5),
        _r("wide", throughput=9000.0),
        _r("small", peak_memory_mb=5.0),
        _r("tiny", size_mb=1.0),
        _r("exact", accuracy=0.95),
    ]
    evaluate(results, load_spec(None, objective=objective))
    w = choose_winner([r for r in results if r.feasible], objective)
    assert w is not None and w.candidate.options["name"] == winner


def test_mse_lower_is_better_for_drop_and_objective() -> None:
    results = [
        _r("ref", reference=True, accuracy=0.10, accuracy_metric="mse"),
        _r("worse", accuracy=0.30, accuracy_metric="mse"),
        _r("better", accuracy=0.05, accuracy_metric="mse"),
    ]
    evaluate(results, load_spec(None, max_accuracy_drop=0.1))
    assert results[1].metric("accuracy_drop") == pytest.approx(0.2) and not results[1].feasible
    assert results[2].feasible
    assert choose_winner([r for r in results if r.feasible], "accuracy").candidate.options["name"] == "better"


def test_pareto_front_and_failed_results() -> None:
    a, b, c = _r("a", p50_ms=1.0, accuracy=0.9), _r("b", p50_ms=2.0, accuracy=0.95), _r("c", p50_ms=3.0, accuracy=0.9)
    dead = _r("dead", status="failed")
    front = pareto_front([a, b, c, dead])
    assert {r.candidate.options["name"] for r in front} == {"a", "b"}


def test_nothing_feasible_gives_near_misses_ordered_by_distance() -> None:
    results = [
        _r("ref", reference=True, p99_ms=10.0),
        _r("close", p99_ms=5.5),
        _r("far", p99_ms=50.0),
        _r("two", p99_ms=6.0, peak_memory_mb=500.0),
        _r("dead", status="timeout"),
    ]
    evaluate(results, load_spec(None, max_p99_ms=5.0, max_memory_mb=100.0))
    assert choose_winner([r for r in results if r.feasible], "latency") is None
    misses = near_misses(results)
    assert [m.candidate.options["name"] for m in misses][:2] == ["close", "ref"]
    assert misses[0].violations[0].describe().startswith("p99_ms 5.5ms > 5ms (by 0.5ms, +10%)")
    assert "dead" not in {m.candidate.options["name"] for m in misses}


def _reduced(name: str, passes: tuple = (), **metrics: float) -> CandidateResult:
    """A candidate with the given passes (or OpenVINO-style precision option) and metrics."""
    r = _r(name, **metrics)
    options = {"name": name, **({"precision": "bf16"} if name == "bf16" else {})}
    return CandidateResult(Candidate("onnxruntime", passes, options), r.measurement)


def test_reduced_precision_keeps_the_default_fidelity_floor_without_a_quality_bound() -> None:
    from chipfit.search.select import precision_of
    from chipfit.spec import DEFAULT_MIN_FIDELITY

    int8 = ({"name": "int8_dynamic", "params": {}},)
    results = [
        _r("ref", reference=True, fidelity=1.0),
        _reduced("fp32", fidelity=0.95),  # fp32 needs no floor: its drift is not the precision's
        _reduced("int8-bad", int8, fidelity=0.95),
        _reduced("int8-good", int8, fidelity=0.995),
        _reduced("bf16", fidelity=0.95),
        _reduced("fp16", ({"name": "fp16", "params": {}},), fidelity=0.95),
    ]
    assert [precision_of(r.candidate) for r in results] == ["fp32", "fp32", "int8", "int8", "bf16", "fp16"]
    evaluate(results, load_spec(None, max_p99_ms=100.0))
    feasible = {r.candidate.options["name"] for r in results if r.feasible}
    assert feasible == {"ref", "fp32", "int8-good"}
    bad = results[2]
    assert [v.constraint for v in bad.violations] == ["min_fidelity"] and bad.violations[
        0
    ].bound == DEFAULT_MIN_FIDELITY
    assert "default floor for int8 without a quality bound" in bad.violations[0].describe()
    assert bad.to_dict()["quality_floor"] == {
        "min_fidelity": DEFAULT_MIN_FIDELITY,
        "default": True,
        "precision": "int8",
    }
    assert results[1].to_dict()["quality_floor"] is None
    # an explicit quality bound replaces the default: the user's own bound, for every candidate alike
    evaluate(results, load_spec(None, min_fidelity=0.9))
    assert all(r.feasible for r in results) and all(r.quality_floor is None for r in results)
    evaluate(results, load_spec(None, max_accuracy_drop=0.5))
    assert results[2].feasible


def test_a_p99_verdict_from_fewer_than_100_samples_says_so() -> None:
    results = [
        _r("ref", reference=True, p99_ms=1.0, samples=500, p99_reliable=True),
        _r("held-few", p99_ms=4.0, samples=40, p99_reliable=False),
        _r("missed-few", p99_ms=6.0, samples=40, p99_reliable=False),
        _r("held-many", p99_ms=4.0, samples=400, p99_reliable=True),
    ]
    evaluate(results, load_spec(None, max_p99_ms=5.0))
    ref, held_few, missed_few, held_many = results
    assert held_few.feasible and held_many.feasible
    assert held_few.caveats and "40 samples, fewer than 100: not reliable" in held_few.caveats[0]
    assert not held_many.caveats and not ref.caveats
    assert "p99 from only 40 samples, fewer than 100: not reliable" in missed_few.violations[0].describe()
    row = held_few.to_dict()
    assert row["p99_reliable"] is False and row["caveats"] == held_few.caveats
    assert held_many.to_dict()["p99_reliable"] is True
    evaluate(results, load_spec(None, max_p50_ms=5.0))  # no p99 bound: nothing to caution about
    assert not held_few.caveats


def test_cost_bounds_are_checked_at_the_given_targets_price() -> None:
    """A farm target's candidates are judged at that target's $/hour, not at this machine's."""
    from chipfit.hardware.catalog import load_catalog

    catalog = load_catalog()
    priced = sorted((t for t in catalog.values() if t.usd_per_hour), key=lambda t: t.usd_per_hour)
    cheap, dear = priced[0], priced[-1]
    thr = 1000.0  # inferences/s: $/1M = usd_per_hour / 3600 / thr * 1e6
    bound = (cheap.usd_per_hour + dear.usd_per_hour) / 2 / 3600 / thr * 1e6
    spec = load_spec(None, max_cost_per_1m=bound)
    for target, feasible in ((cheap, True), (dear, False)):
        r = _r("x", throughput=thr, p50_ms=1.0)
        evaluate([r], spec, target)
        assert r.measurement.metrics["cost_target"] == target.name
        assert (not r.violations) is feasible, (target.name, r.violations)
