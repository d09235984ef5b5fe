"""The serving latency model, unit by unit: it starts from fit's profile, scales it by what the server observes,
learns online over a window (an outlier ages out), and never estimates a larger batch faster than a smaller
one. Pure arithmetic on given service times: nothing is timed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chipfit.serve.admission import Slack
from chipfit.serve.latency import LatencyModel

SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128]


def test_the_profile_is_the_prior_interpolated_and_extrapolated_in_the_batch() -> None:
    m = LatencyModel([{"batch": 1, "p50_ms": 2.0}, {"batch": 8, "p50_ms": 4.0}, {"batch": 32, "p50_ms": 10.0}])
    assert m.typical(1) == pytest.approx(0.002) and m.typical(8) == pytest.approx(0.004)
    assert m.typical(16) == pytest.approx(0.006)  # linear between 8 and 32
    assert m.typical(64) == pytest.approx(0.018)  # extrapolated from the last two points
    assert m.p99(8) == pytest.approx(0.006)  # p50 × 1.5 is the prior tail
    only_p99 = LatencyModel([{"batch": 4, "p99_ms": 8.0}])
    assert only_p99.typical(4) == pytest.approx(0.008) and only_p99.typical(8) == pytest.approx(0.016)
    assert only_p99.typical(2) == pytest.approx(0.008)  # one point: proportional above it, flat below
    nothing = LatencyModel(None)
    assert nothing.typical(8) == 0.0 and nothing.largest_within(0.001, 16) == 16


def test_observed_sizes_scale_the_rest_of_the_profile() -> None:
    profile = [{"batch": 1, "p50_ms": 2.0}, {"batch": 8, "p50_ms": 4.0}, {"batch": 32, "p50_ms": 10.0}]
    m = LatencyModel(profile, min_samples=8)
    for _ in range(7):
        m.observe(1, 0.006)
    assert m.typical(1) == pytest.approx(0.002)  # fewer than min_samples: the profile still rules
    m.observe(1, 0.006)  # the server runs 3× slower than fit measured (it shares its cores)
    assert m.typical(1) == pytest.approx(0.006)
    assert m.typical(8) == pytest.approx(0.012) and m.typical(32) == pytest.approx(0.030)  # the profile × 3


def test_a_window_of_observations_lets_an_outlier_age_out() -> None:
    m = LatencyModel(None, min_samples=4, window=8)
    for t in [0.001] * 7 + [0.100]:
        m.observe(2, t)
    assert m.p99(2) > 0.05 and m.typical(2) == pytest.approx(0.001)  # the tail sees it, the median does not
    for _ in range(8):
        m.observe(2, 0.001)
    assert m.p99(2) == pytest.approx(0.001)  # eight newer samples pushed it out of the window


def test_the_model_follows_a_change_in_speed_online() -> None:
    m = LatencyModel([{"batch": 4, "p50_ms": 1.0}], min_samples=4, window=16)
    for _ in range(16):
        m.observe(4, 0.001)
    for _ in range(16):
        m.observe(4, 0.003)  # the machine got busier
    assert m.typical(4) == pytest.approx(0.003) and m.typical(8) == pytest.approx(0.006)


@pytest.mark.parametrize("seed", range(5))
def test_the_estimate_never_falls_as_the_batch_grows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    profile = [{"batch": b, "p50_ms": float(rng.uniform(0.5, 5.0))} for b in (1, 4, 16, 64)]  # noisy, not monotone
    m = LatencyModel(profile, min_samples=2)
    for b in rng.choice([1, 2, 8, 32], size=40):
        m.observe(int(b), float(rng.uniform(0.0005, 0.01)))
    for est in (m.typical, m.p99):
        values = [est(b) for b in SIZES]
        assert all(a <= b for a, b in itertools.pairwise(values)), values


def test_largest_within_is_the_largest_batch_that_fits_the_budget() -> None:
    m = LatencyModel([{"batch": 1, "p50_ms": 1.0}, {"batch": 16, "p50_ms": 16.0}])  # 1 ms a row, p99 1.5 ms
    assert m.largest_within(0.0105, 64) == 10
    assert m.largest_within(0.0105, 64, tail=True) == 7
    assert m.largest_within(0.0105, 4) == 4  # the cap bounds it
    assert m.largest_within(0.0, 64) == 1  # at least one row
    assert m.largest_within(1.0, 64) == 64


def test_the_margin_learned_from_misses_settles_where_one_request_in_a_hundred_is_late() -> None:
    # each admitted request needs an unforeseen extra time X ~ Exp(1 ms) beyond what admission kept for it: it
    # ends late when X exceeds the margin. The 99th percentile of X is ln(100) ms ≈ 4.6 ms: the margin should
    # settle there, with about 1% late, whatever it started from
    rng = np.random.default_rng(0)
    s = Slack(slo_s=0.020)
    extra = rng.exponential(1e-3, 60_000)
    late, margins = [], []
    now = 0.0
    for e in extra:
        now += 1e-4  # a request every 0.1 ms: never quiet for a horizon
        due = now - e + s.margin_s
        s.observe(now, now, [due])
        late.append(now > due)
        margins.append(s.margin_s)
    share = float(np.mean(late[20_000:]))
    assert 0.006 < share < 0.016
    for part in (margins[20_000:40_000], margins[40_000:]):  # settled, not drifting
        assert float(np.mean(part)) == pytest.approx(np.log(100) * 1e-3, rel=0.25)
    assert s.late == sum(late) and s.admitted == len(extra)


def test_the_slack_is_bounded_ages_out_and_decays_when_quiet() -> None:
    s = Slack(slo_s=0.010, horizon_s=0.050)
    for t in range(100):  # every request late: the margin stops at half the SLO, leaving an empty queue room
        s.observe(t * 1e-3, t * 1e-3 - 0.003, [0.0])
    assert s.margin_s == pytest.approx(0.005)
    assert s.return_lag(0.099) == pytest.approx(0.003) and s.reserve(0.099) == pytest.approx(0.008)
    assert s.return_lag(0.099 + 0.051) == 0.0  # no batch ended in the last horizon: no lag kept
    assert s.reserve(0.099 + 0.100) == pytest.approx(0.005 * 0.5**2)  # two horizons with nothing delivered
    with pytest.raises(ValueError, match="share of late requests"):
        Slack(0.01, target=1.0)
