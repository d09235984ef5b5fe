"""The adaptive batcher's rules, with an injected clock and the batches run by the test (``start=False`` and
``step()``): batch sizing for the most requests on time, the AIMD cap, deadline-aware admission and the
rejection of requests that can no longer be on time. Nothing sleeps and no verdict depends on the machine's
speed: the fake model advances the clock by the cost the test gives it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from chipfit.serve.batcher import AdaptiveBatcher, Overloaded
from chipfit.testing.serving import ManualClock

MS = 1e-3


class Model:
    """y = 2x, costing ``cost(rows)`` seconds of the manual clock; records each batch's size and start time."""

    def __init__(self, clock: ManualClock, cost: Callable[[int], float], fail_on: int | None = None) -> None:
        self.clock, self.cost, self.fail_on = clock, cost, fail_on
        self.sizes: list[int] = []
        self.starts: list[float] = []
        self.during: Callable[[], None] | None = None  # called while the batch "runs" (after it started)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(feeds["x"])
        self.sizes.append(n)
        self.starts.append(self.clock())
        if self.during is not None:
            self.during()
        self.clock.advance(self.cost(n))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("the model failed on this batch")
        return [feeds["x"] * 2]


def flat(ms: float) -> Callable[[int], float]:
    return lambda n: ms * MS


def make(clock: ManualClock, model: Model, slo_ms: float, **kw: Any) -> AdaptiveBatcher:
    kw.setdefault("max_queue", 1000)
    return AdaptiveBatcher(model, ["y"], slo_ms * MS, clock=clock, start=False, **kw)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    """Let the event loop deliver the results the batch posted to it (call_soon_threadsafe)."""
    for _ in range(3):
        await asyncio.sleep(0)


def x(i: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), i, np.float32)}


def rejection(fut: asyncio.Future[Any]) -> str | None:
    exc = fut.exception() if fut.done() else None
    return exc.reason if isinstance(exc, Overloaded) else None


def test_each_request_gets_its_own_rows_back_from_one_batch() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1))
    b = make(clock, model, 100, max_batch=16)

    async def scenario() -> None:
        rows = [1, 3, 2, 1, 4]
        futs = [b.submit(x(i, r), r) for i, r in enumerate(rows)]
        assert b.queue_depth == 11
        assert b.step() == 11 and model.sizes == [11]  # no profile: the cap is max_batch, all run together
        await settle()
        for i, (f, r) in enumerate(zip(futs, rows, strict=True)):
            np.testing.assert_array_equal(f.result()["y"], np.full((r, 2), 2 * i, np.float32))
        assert b.queue_depth == 0 and b.step() == 0

    run(scenario)


def test_the_batch_is_shrunk_to_the_prefix_that_is_on_time_on_a_compute_bound_model() -> None:
    clock = ManualClock()
    model = Model(clock, lambda n: 10 * MS * n)
    # 10 ms a row; 8 requests queued at t=0 with a 100 ms SLO, the model free at t=35 ms: a batch of k ends at
    # 35 + 10k ms, so 6 finish on time together and a batch of 8 would make all 8 late
    b = make(clock, model, 100, profile=[{"batch": 1, "p50_ms": 10.0}, {"batch": 8, "p50_ms": 80.0}])

    async def scenario() -> None:
        futs = [b.submit(x(i), 1) for i in range(8)]
        clock.advance(35 * MS)
        assert b.step() == 6
        await settle()
        assert all(f.done() and not f.exception() for f in futs[:6]) and not any(f.done() for f in futs[6:])

    run(scenario)


def test_the_batch_is_not_shrunk_for_its_oldest_request_when_a_larger_one_puts_more_on_time() -> None:
    clock = ManualClock()
    model = Model(clock, lambda n: (40 + 4 * (n - 1)) * MS)
    # memory-bound: 40 ms for 1 row, 68 ms for 8. The oldest asks for 50 ms: alone (or with 2 others) it is on
    # time; with all 8 it is late but the other 7 are on time — 7 beat 3. (A rule sizing the batch for its
    # oldest request would run 3, or 1 when sized by the p99.)
    b = make(clock, model, 400, profile=[{"batch": 1, "p50_ms": 40.0}, {"batch": 16, "p50_ms": 100.0}])

    async def scenario() -> None:
        b.submit(x(0), 1, deadline_s=0.050)
        for i in range(1, 8):
            b.submit(x(i), 1)
        assert b.step() == 8

    run(scenario)


def test_on_a_tie_the_larger_batch_is_taken() -> None:
    clock = ManualClock()
    model = Model(clock, flat(10))
    b = make(clock, model, 100, profile=[{"batch": 1, "p50_ms": 10.0}, {"batch": 16, "p50_ms": 10.0}])

    async def scenario() -> None:
        b.submit(x(0), 1)
        b.submit(x(1), 1)
        b.submit(x(2), 1, deadline_s=0.030)
        clock.advance(25 * MS)
        # batches of 2 and of 3 both end at 35 ms with 2 on time (the third is late either way): the larger
        # one answers it too, instead of leaving it to be rejected
        assert b.step() == 3

    run(scenario)


def test_a_lone_request_runs_at_once_on_the_model_thread_with_no_window() -> None:
    clock = ManualClock(start=5.0)  # never advances: a batcher that waited for company by the clock would hang
    model = Model(clock, flat(0))
    b = AdaptiveBatcher(model, ["y"], 0.1, clock=clock, max_batch=16)  # its own model thread

    async def scenario() -> None:
        out = await asyncio.wait_for(b.submit(x(3), 1), timeout=30)
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 6, np.float32))
        assert model.sizes == [1] and model.starts == [5.0]
        with pytest.raises(RuntimeError, match="start=False"):
            b.step()

    try:
        run(scenario)
    finally:
        b.close()


def test_the_cap_grows_by_one_after_a_full_batch_only_while_more_are_queued() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1))
    b = make(clock, model, 1000, profile=[{"batch": 1, "p50_ms": 1.0}, {"batch": 64, "p50_ms": 1.0}], max_batch=10)

    async def scenario() -> None:
        for i in range(8):
            b.submit(x(i), 1)
        assert b.step() == 8 and b.cap == 8  # a full batch, but nothing was waiting behind it
        for i in range(21):
            b.submit(x(i), 1)
        steps = [b.step() for _ in range(4)]
        assert steps == [8, 9, 4, 0] and b.cap == 10  # 8 → 9 → 10 (max_batch); the last batch was not full
        for i in range(25):
            b.submit(x(i), 1)
        assert [b.step() for _ in range(3)] == [10, 10, 5] and b.cap == 10  # never above max_batch

    run(scenario)


def test_the_cap_falls_only_when_a_batchs_own_run_overran_what_the_slo_left_it() -> None:
    clock = ManualClock()
    model = Model(clock, flat(30))  # every batch runs 30 ms; SLO 100 ms; no profile: the cap starts at 16

    async def batch(b: AdaptiveBatcher, waited_ms: float, rows: int = 4, deadline_s: float | None = None) -> None:
        for i in range(rows):
            b.submit(x(i), 1, deadline_s)
        clock.advance(waited_ms * MS)
        assert b.step() == rows

    async def scenario() -> None:
        b = make(clock, model, 100, max_batch=16)
        await batch(b, 60)  # waited 60 ms, ran 30: done at 90 ms, within the SLO
        assert b.cap == 16
        await batch(b, 80)  # waited 80 ms, 20 left, ran 30: the run overran → ×0.75
        assert b.cap == 12
        await batch(b, 80, rows=1)  # a lone row overran: a smaller batch cannot help
        assert b.cap == 12
        # queued past the SLO under a long X-Deadline-Ms: nothing was left when it started, so it was late by
        # waiting, not by the batch's size
        await batch(b, 120, deadline_s=0.5)
        assert b.cap == 12
        await batch(b, 75)  # and overrunning again keeps shrinking it: 12 → 9
        assert b.cap == 9

    run(scenario)


def test_admission_counts_the_queue_in_batches_and_rejects_past_the_deadline() -> None:
    clock = ManualClock()
    model = Model(clock, flat(10))
    # 10 ms a batch of up to 16 rows (memory-bound), SLO 105 ms, cap 8: the queue drains 8 rows per 10 ms, so a
    # request with i rows ahead completes at (i // 8 + 1) × 10 ms — 80 fit; counted one row at a time, 10 would
    prof = [{"batch": 1, "p50_ms": 10.0}, {"batch": 16, "p50_ms": 10.0}]
    b = make(clock, model, 105, profile=prof, max_batch=16)

    async def scenario() -> None:
        for i in range(8):
            b.submit(x(i), 1)
        with pytest.raises(Overloaded, match="cannot meet its deadline"):
            b.submit(x(8), 1, deadline_s=0.015)  # 8 rows ahead: done at 20 ms, past its own 15 ms deadline
        for i in range(8, 80):
            b.submit(x(i), 1)
        with pytest.raises(Overloaded, match="cannot meet its deadline") as info:
            b.submit(x(80), 1)
        assert info.value.retry_after_s == pytest.approx(0.110)  # when the queue ahead of it should be done
        assert b.queue_depth == 80  # the rejected ones were not queued
        b.submit(x(81), 1, deadline_s=1.0)  # a longer deadline of its own is admitted
        clock.advance(10 * MS)
        assert b.step() == 8
        b.submit(x(83), 1)  # a batch drained: room again

    run(scenario)


def test_admission_counts_what_is_left_of_the_running_batch() -> None:
    clock = ManualClock()
    model = Model(clock, flat(10))
    prof = [{"batch": 1, "p50_ms": 10.0}, {"batch": 16, "p50_ms": 10.0}]
    b = make(clock, model, 105, profile=prof, max_batch=16)
    admitted: list[int] = []

    def burst_while_running() -> None:  # 10 ms of the running batch are left: 72 rows fit behind it, not 80
        for i in range(100):
            try:
                b.submit(x(i), 1)
                admitted.append(i)
            except Overloaded:
                pass

    async def scenario() -> None:
        b.submit(x(0), 1)
        model.during = burst_while_running
        assert b.step() == 1
        model.during = None
        assert len(admitted) == 72 and admitted == list(range(72))

    run(scenario)


def test_an_empty_queue_admits_whatever_the_estimate_says_and_the_queue_is_bounded() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1))
    # the estimate (500 ms a run) is far over the SLO (100 ms): a request arriving while a batch runs, with
    # nothing queued, is admitted anyway and runs next, since only what is measured on admitted requests can
    # correct a wrong estimate
    b = make(clock, model, 100, profile=[{"batch": 1, "p50_ms": 500.0}], max_queue=4)
    next_one: list[asyncio.Future[Any]] = []

    async def scenario() -> None:
        b.submit(x(0), 1)
        model.during = lambda: next_one.append(b.submit(x(1), 1))
        assert b.step() == 1 and len(next_one) == 1
        model.during = None
        assert b.step() == 1
        await settle()
        assert next_one[0].result()
        with pytest.raises(Overloaded, match="queue full"):
            b.submit(x(1), 5)  # more rows than the queue holds, even empty
        b.submit(x(2), 4)
        with pytest.raises(Overloaded, match="queue full"):
            b.submit(x(3), 1)

    run(scenario)


def test_requests_whose_deadline_passed_in_the_queue_are_rejected_not_run() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1))
    b = make(clock, model, 100)

    async def scenario() -> None:
        futs = [b.submit(x(i), 1) for i in range(3)]
        late = b.submit(x(9), 1, deadline_s=0.01)
        clock.advance(50 * MS)  # the 10 ms one is past its deadline; the others still have 50 ms
        assert b.step() == 3 and model.sizes == [3]
        await settle()
        assert rejection(late) == "deadline passed in the queue" and all(f.result() for f in futs)
        futs = [b.submit(x(i), 1) for i in range(3)]
        clock.advance(200 * MS)
        assert b.step() == 0 and model.sizes == [3]  # the model never ran them
        await settle()
        assert [rejection(f) for f in futs] == ["deadline passed in the queue"] * 3
        assert b.stats.rejected == {"deadline passed in the queue": 4} and b.queue_depth == 0

    run(scenario)


def test_a_request_queued_past_half_the_slo_is_rejected_when_its_run_would_end_late() -> None:
    clock = ManualClock()
    model = Model(clock, flat(80))
    b = make(clock, model, 100, profile=[{"batch": 1, "p50_ms": 80.0}])  # 80 ms a run, SLO 100 ms

    async def scenario() -> None:
        early = b.submit(x(0), 1)
        clock.advance(30 * MS)  # hardly waited: run, although the estimate says it ends at 110 ms
        assert b.step() == 1
        await settle()
        assert early.result()
        clock.advance(1.0)
        waited = b.submit(x(1), 1)
        clock.advance(60 * MS)  # waited over half the SLO and would end at 140 ms: rejected now, not served late
        assert b.step() == 0
        await settle()
        assert rejection(waited) == "deadline passed in the queue" and model.sizes == [1]

    run(scenario)


def test_max_batch_1_runs_one_request_at_a_time_however_long_the_queue() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1))
    b = make(clock, model, 1000, max_batch=1)

    async def scenario() -> None:
        for i in range(6):
            b.submit(x(i), 1)
        assert [b.step() for _ in range(7)] == [1] * 6 + [0] and b.cap == 1

    run(scenario)


def test_a_failing_batch_fails_its_own_requests_and_the_batcher_goes_on() -> None:
    clock = ManualClock()
    model = Model(clock, flat(1), fail_on=1)
    b = make(clock, model, 100, max_batch=2)

    async def scenario() -> None:
        futs = [b.submit(x(i), 1) for i in range(3)]
        assert b.step() == 2
        assert b.step() == 1
        await settle()
        assert [type(f.exception()).__name__ for f in futs[:2]] == ["RuntimeError"] * 2
        np.testing.assert_array_equal(futs[2].result()["y"], np.full((1, 2), 4, np.float32))

    run(scenario)


def test_service_times_come_from_the_injected_clock_and_teach_the_latency_model() -> None:
    clock = ManualClock()
    model = Model(clock, lambda n: (2 + n) * MS)
    seen: list[tuple[int, float, int]] = []
    b = make(clock, model, 100, max_batch=4, on_batch=lambda r, s, q: seen.append((r, s, q)))

    async def scenario() -> None:
        for i in range(6):
            b.submit(x(i), 1)
        b.step()
        b.step()
        assert seen == [(4, pytest.approx(6 * MS), 2), (2, pytest.approx(4 * MS), 0)]
        for _ in range(8):  # eight runs of 4 rows at 6 ms: the latency model now knows batch 4
            for i in range(4):
                b.submit(x(i), 1)
            b.step()
        assert b.latency.typical(4) == pytest.approx(6 * MS)

    run(scenario)


def test_a_non_positive_slo_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="SLO must be a positive"):
        AdaptiveBatcher(lambda f: [], ["y"], 0.0, start=False)


def test_a_deadline_runs_from_when_the_server_started_on_the_request() -> None:
    clock = ManualClock()
    model = Model(clock, flat(2))
    prof = [{"batch": 1, "p50_ms": 2.0}, {"batch": 16, "p50_ms": 2.0}]
    b = make(clock, model, 10, profile=prof, max_batch=4)

    async def scenario() -> None:
        for i in range(4):
            b.submit(x(i), 1)  # one batch ahead: a request queued now completes at 4 ms
        b.submit(x(4), 1, started=clock() - 5 * MS)  # decoding it took 5 ms: 9 ms of its 10, on time
        with pytest.raises(Overloaded, match="cannot meet its deadline"):
            b.submit(x(5), 1, started=clock() - 7 * MS)  # 7 + 4 = 11 ms: late, so rejected now

    run(scenario)


def test_the_servers_own_time_after_a_run_is_reserved_out_of_later_deadlines() -> None:
    clock = ManualClock()
    model = Model(clock, flat(2))
    prof = [{"batch": 1, "p50_ms": 2.0}, {"batch": 16, "p50_ms": 2.0}]
    b = make(clock, model, 10, profile=prof, max_batch=4)

    async def handler(loop_ms: float) -> None:
        await b.submit(x(0), 1)
        clock.advance(loop_ms * MS)  # the event loop busy with other requests, then the reply's encoding

    async def one_request(loop_ms: float) -> None:
        task = asyncio.create_task(handler(loop_ms))
        await settle()  # it is submitted
        assert b.step() == 1
        await settle()  # its result delivered, the handler through, then the batcher's probe
        await task

    async def fill() -> None:
        for i in range(4):
            b.submit(x(i), 1)  # one batch ahead: a request queued now is done with the model 4 ms later

    async def scenario() -> None:
        await one_request(0)
        assert b.slack.return_lag(clock()) == 0.0
        await fill()
        b.submit(x(4), 1)  # done at 4 ms of its 10: admitted
        for _ in range(2):
            b.step()
        await settle()
        await one_request(7)  # ran 2 ms, then 7 ms until its handler was through: on time (9 of 10 ms)
        assert b.slack.return_lag(clock()) == pytest.approx(7 * MS) and b.slack.late == 0
        await fill()
        with pytest.raises(Overloaded, match="cannot meet its deadline"):
            b.submit(x(4), 1)  # 4 ms for the model + 7 to return = 11 ms: rejected now, not served late
        b.submit(x(5), 1, deadline_s=0.012)  # a deadline of its own that leaves room is admitted
        for _ in range(2):
            b.step()
        await settle()
        with pytest.raises(Overloaded, match="cannot meet its deadline"):  # an empty queue, but 4 ms spent
            b.submit(x(6), 1, started=clock() - 4 * MS)  # decoding it and 7 to return leave nothing for the run
        clock.advance(b.slack.horizon_s + 1 * MS)
        assert b.slack.reserve(clock()) == 0.0  # the lag aged out with the horizon, and nothing was late
        await fill()
        b.submit(x(4), 1)

    run(scenario)


def test_requests_that_end_late_teach_a_margin_that_rejects_earlier() -> None:
    clock = ManualClock()
    # the profile says 2 ms a batch; the first seven runs take 12 ms (a stall no estimate saw coming: the
    # process descheduled, say), too few for the latency model to learn (it waits for eight)
    model = Model(clock, lambda n: (12 if len(model.sizes) <= 7 else 2) * MS)
    prof = [{"batch": 1, "p50_ms": 2.0}, {"batch": 16, "p50_ms": 2.0}]
    b = make(clock, model, 10, profile=prof, max_batch=4)

    async def scenario() -> None:
        for i in range(7):
            late = b.submit(x(i), 1)  # an empty queue: admitted
            assert b.step() == 1
            await settle()
            assert late.result() and b.slack.late == i + 1  # served, but 12 ms after it came: past its 10 ms
        assert b.latency.typical(1) == pytest.approx(2 * MS) and b.slack.return_lag(clock()) == 0.0
        assert b.slack.margin_s == pytest.approx(3.5 * MS)  # seven misses × SLO/20
        for i in range(4):
            b.submit(x(i), 1)  # done with the model 4 ms from now
        with pytest.raises(Overloaded, match="cannot meet its deadline"):
            b.submit(x(4), 1, deadline_s=0.007)  # 4 + 3.5 > 7 ms: rejected; before the misses it was admitted
        b.submit(x(5), 1, deadline_s=0.008)  # 4 + 3.5 ≤ 8 ms: admitted

    run(scenario)
