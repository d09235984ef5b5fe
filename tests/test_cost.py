"""Cost and energy: $/1M inferences from the target's price, energy measured from counters (a powercap tree
written by the test) or modelled from power, both usable as objective and constraint; this machine matched
to the catalogue."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import chipfit
from chipfit.hardware.catalog import load_catalog
from chipfit.hardware.cost import cost_energy, usd_per_1m
from chipfit.hardware.energy import EnergyMeter
from chipfit.hardware.local import local_target, match_local


def test_cost_and_modelled_energy_arithmetic() -> None:
    t = replace(load_catalog()["aws-c6a.xlarge"], usd_per_hour=0.36, watts=10.0, threads=4)
    assert usd_per_1m(0.36, 100.0) == pytest.approx(1.0)  # 100/s = 360k/h → $0.36 per 360k → $1 per 1M
    out = cost_energy({"throughput": 1000.0}, t, {"intra_op_num_threads": 2})
    assert out["usd_per_1m"] == pytest.approx(0.1)
    assert out["energy_mj"] == pytest.approx(10.0 * 0.5 / 1000 * 1e3)  # half the cores for 1 ms
    assert out["energy_method"].startswith("modelled")
    measured = cost_energy({"throughput": 1000.0, "energy_j_per_inf": 0.002, "energy_counter": "RAPL"}, t, {})
    assert measured["energy_mj"] == pytest.approx(2.0) and measured["energy_method"] == "measured: RAPL"
    assert cost_energy({"throughput": None}, t, {}) == {}


def test_energy_meter_reads_rapl_packages_and_survives_wraparound(tmp_path: Path) -> None:
    for name, uj in (("intel-rapl:0", 1_000_000), ("intel-rapl:1", 5_000_000), ("intel-rapl:0:0", 7)):
        d = tmp_path / name
        d.mkdir()
        (d / "energy_uj").write_text(str(uj))
        (d / "max_energy_range_uj").write_text("10000000")
    meter = EnergyMeter(tmp_path)
    assert meter.available and "2 package domain(s)" in (meter.method or "")
    assert meter.read() == 0.0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3000000")  # +2 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("1000000")  # wrapped: +6 J
    assert meter.read() == pytest.approx(8.0)
    # no powercap tree, or a domain whose counter cannot be read: no RAPL counter is claimed (only a GPU's
    # NVML counter may remain), and the package domains read above are not affected
    broken = tmp_path / "broken" / "intel-rapl:0"
    broken.mkdir(parents=True)
    (broken / "energy_uj").write_text("n/a")
    for root in (tmp_path / "absent", tmp_path / "broken"):
        m = EnergyMeter(root)
        assert (m.method or "NVML").startswith("NVML") and (m.available == (m.method is not None)), m.method
    assert "2 package domain(s)" in (EnergyMeter(tmp_path).method or "")


def test_this_machine_is_matched_to_the_catalogue_and_says_how() -> None:
    match, info = match_local()
    target, _ = local_target(measure=False)
    assert target.name == "local" and target.usd_per_hour > 0 and target.watts > 0
    assert info["how"] and ("resembles" in info["how"] or "is the CPU of" in info["how"] or match is None)
    assert target.price["basis"]  # a scaled or estimated price says so


def test_objective_cost_and_the_cost_and_energy_bounds(mlp: Path, mlp_npz: Path, fast_settings, cli_run) -> None:  # type: ignore[no-untyped-def]
    from chipfit.search.space import SpaceOptions

    space = SpaceOptions(
        backends=("onnxruntime",),
        batch_sizes=(1, 8),
        threads=(1,),
        opt_levels=("all",),
        execution_modes=("sequential",),
        passes=(),
    )
    result = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings, objective="cost")
    ok = [r for r in result.candidates if r.measurement.ok]
    assert all(r.metric("usd_per_1m") > 0 and r.metric("energy_mj") > 0 for r in ok)
    assert result.winner is not None
    assert result.winner.metric("usd_per_1m") == min(r.metric("usd_per_1m") for r in ok if r.feasible)
    energy = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings, objective="energy")
    assert energy.winner.metric("energy_mj") == min(r.metric("energy_mj") for r in energy.candidates if r.feasible)
    tight = chipfit.fit(mlp, mlp_npz, space=space, settings=fast_settings, max_cost_per_1m=1e-12, max_energy_mj=1e-9)
    assert tight.winner is None
    assert {v.constraint for v in tight.near_misses[0].violations} == {"max_cost_per_1m", "max_energy_mj"}
    assert "--max-cost-per-1m must be a positive number of dollars" in cli_run(
        "fit", str(mlp), "--data", str(mlp_npz), "--max-cost-per-1m", "-1", code=2
    )
