"""SLO-aware adaptive batching, one batcher (and one model thread) per served model version.

Requests queue; the model thread takes the queue as it finds it — a lone request runs at once, no waiting
window — up to a batch whose estimated p99 service time, added to the oldest request's wait, still meets the
SLO (the latency model starts from ``fit``'s profile and learns online), and under an AIMD cap as in Clipper:
+1 row after a full batch while more were queued, ×0.75 after a batch whose own run overran what the SLO left
it (a miss caused by waiting is not the batch size's fault). ``max_batch`` bounds both (``max_batch=1``
serves one request at a time). Admission is deadline-aware: a request whose predicted completion (the rest of
the running batch, the rows ahead in batches of the size the queue drains at, then its own) is past its
deadline is rejected at
once with a retry hint instead of being served late, and so is a request that is still queued when its
deadline can no longer be met; the queue is bounded. A deadline runs from when the server started on the
request (``started``: its body read and decoded count) and ends when the reply is ready, so the time the
server takes after a batch's run — the event loop busy with other requests before it wakes the handler,
the encoding — is reserved out of it, with a margin learned from the admitted requests that still ended late
(``chipfit.serve.admission.Slack``). Without it a burst on a busy CPU fills the loop, and admitted requests
finish late with the model idle.

Time is read from an injected ``clock`` (default ``time.perf_counter``), and ``start=False`` runs no model
thread: the caller runs each batch with ``step()``. Together they make every scheduling decision testable
without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chipfit.serve.admission import Slack
from chipfit.serve.latency import LatencyModel

__all__ = ["AdaptiveBatcher", "Overloaded"]


class Overloaded(Exception):
    """The request cannot meet its deadline (HTTP 429); ``retry_after_s`` is when the queue should be clear."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Req:
    feeds: dict[str, np.ndarray]
    rows: int
    arrival: float
    deadline: float  # when its batch must end: ``due`` less what is reserved for the server's own time after it
    due: float  # when its reply must be ready
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass
class BatcherStats:
    batches: int = 0
    rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class AdaptiveBatcher:
    def __init__(
        self,
        run: Any,  # callable: feeds -> list of output arrays
        output_names: list[str],
        slo_s: float,
        profile: list[dict[str, Any]] | None = None,
        max_batch: int = 64,
        max_queue: int | None = None,
        on_batch: Any = None,  # callback(batch_rows, service_s, queue_depth)
        name: str = "model",
        clock: Callable[[], float] = time.perf_counter,
        start: bool = True,
    ) -> None:
        if not slo_s > 0:
            raise ValueError(f"the batcher's SLO must be a positive number of seconds; got {slo_s!r}.")
        self._run, self._outputs, self.clock = run, output_names, clock
        self.slo_s, self.max_batch = slo_s, max(1, int(max_batch))
        self.latency = LatencyModel(profile)
        self.cap = self.max_batch if not profile else max(1, min(self.max_batch, 8))  # AIMD cap: grows under load
        self.max_queue = max_queue or max(64, 4 * self.max_batch)
        self._q: collections.deque[_Req] = collections.deque()
        self._rows_queued = 0
        self._cv = threading.Condition()
        self._on_batch = on_batch
        self._busy_until = 0.0  # when the running batch should end (its typical time), 0 when idle
        self._closed = False
        self.slack = Slack(slo_s)
        self.stats = BatcherStats()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name=f"chipfit-batcher-{name}", daemon=True)
            self._thread.start()

    # -- called on the event loop -----------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._rows_queued

    def submit(
        self, feeds: dict[str, np.ndarray], rows: int, deadline_s: float | None = None, started: float | None = None
    ) -> asyncio.Future[Any]:
        """Queue a request; its future resolves to ``{output name: array}`` or raises ``Overloaded``. Its
        deadline (the SLO, or a shorter ``deadline_s``) runs from ``started`` (by this batcher's clock), else now."""
        now = self.clock()
        due = (now if started is None else started) + min(
            deadline_s if deadline_s is not None else self.slo_s, self.slo_s * 10
        )
        deadline = due - self.slack.reserve(now)
        done = self._predicted_wait(rows)
        if self._rows_queued + rows > self.max_queue:
            raise Overloaded("queue full", max(done, 0.001))
        # with nothing queued a request is admitted unless the return lag leaves it no time: the service
        # estimate is only a guess, and what is measured on admitted requests is what corrects it
        if now + (done if self._rows_queued else 0.0) > deadline:
            raise Overloaded("cannot meet its deadline", max(done, 0.001))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._cv:
            self._q.append(_Req(feeds, rows, now, deadline, due, fut, loop))
            self._rows_queued += rows
            self._cv.notify()
        return fut

    def _predicted_wait(self, rows: int) -> float:
        """When a request of ``rows`` rows queued now would complete: what is left of the running batch, then the
        rows ahead in batches of the size the model thread will take, then its own batch."""
        now = self.clock()
        busy = self._busy_left(now)
        ahead = self._rows_queued
        if ahead == 0:
            return busy
        size = self.drain_batch()
        full, part = divmod(ahead, size)
        return busy + full * self.latency.typical(size) + self.latency.typical(min(size, part + rows))

    def _busy_left(self, now: float) -> float:
        return max(0.0, self._busy_until - now) if self._busy_until else 0.0

    def drain_batch(self) -> int:
        """The batch size a queue drains at: the largest (under the AIMD cap) whose typical run fits in the SLO."""
        return self.latency.largest_within(self.slo_s, self.cap)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the model thread -------------------------------------------------------------------------------------
    def _take(self) -> list[_Req]:
        """The next batch, as the queue stands (called with the lock held and the queue non-empty)."""
        now = self.clock()
        expired = []
        while self._q and self._late(self._q[0], now):
            expired.append(self._q.popleft())  # would most likely finish late: rejected now, not served late
        # and so are those among the next batch's candidates (a short X-Deadline-Ms behind a long one)
        window = [self._q.popleft() for _ in range(min(len(self._q), self.cap))]
        live: list[_Req] = []
        for r in window:
            (expired if self._late(r, now) else live).append(r)
        self._q.extendleft(reversed(live))
        batch = [self._q.popleft() for _ in range(self._best_prefix(now))] if self._q else []
        self._rows_queued -= sum(r.rows for r in batch) + sum(r.rows for r in expired)
        for r in expired:
            self._reject(r, "deadline passed in the queue")
        return batch

    def _best_prefix(self, now: float) -> int:
        """How many queued requests (oldest first, under the cap) to run together: the count that lets the most
        of them finish by their deadlines at the batch's typical time, the larger on a tie. Shrinking a batch
        for its oldest request is worth it only when it saves more requests than it delays: on a memory-bound
        model a batch of 8 costs hardly more than 1, and serving the oldest alone would make the rest late."""
        best, best_ok, rows = 1, -1, 0
        deadlines: list[float] = []
        for r in self._q:
            if deadlines and rows + r.rows > self.cap:
                break
            rows += r.rows
            deadlines.append(r.deadline)
            end = now + self.latency.typical(rows)
            ok = sum(d >= end for d in deadlines)
            if ok >= best_ok:
                best, best_ok = len(deadlines), ok
        return best

    def _late(self, r: _Req, now: float) -> bool:
        """Past its deadline, or queued long enough (half the SLO) that its run would end past it. A request
        that has hardly waited is run whatever the estimate says: an estimate inflated by a burst is only
        corrected by what is measured, so it must not stop the model from running."""
        if r.deadline < now:
            return True
        return now - r.arrival > self.slo_s / 2 and r.deadline < now + self.latency.typical(r.rows)

    def _reject(self, r: _Req, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        exc = Overloaded(reason, max(self._predicted_wait(1), 0.001))
        r.loop.call_soon_threadsafe(_set_exception, r.future, exc)

    def step(self) -> int:
        """Take the next batch as the queue stands and run it on the calling thread (for a batcher made with
        ``start=False``); the rows run, 0 when nothing was queued or every queued request was rejected as late."""
        if self._thread is not None:
            raise RuntimeError("step() drives a batcher made with start=False; this one runs its own model thread.")
        with self._cv:
            batch = self._take() if self._q else []
            more_waiting = bool(self._q)
        if batch:
            self._serve(batch, more_waiting)
        return sum(r.rows for r in batch)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if self._closed and not self._q:
                    return
                batch = self._take()
                more_waiting = bool(self._q)
            if batch:
                self._serve(batch, more_waiting)

    def _serve(self, batch: list[_Req], more_waiting: bool) -> None:
        rows = sum(r.rows for r in batch)
        t0 = self.clock()
        budget = self.slo_s - (t0 - batch[0].arrival)  # what the oldest request had left for this run
        self._busy_until = t0 + self.latency.typical(rows)
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds  # a lone request: its arrays as they came, no copy
            else:
                feeds = {k: np.concatenate([r.feeds[k] for r in batch]) for k in batch[0].feeds}
            outs = self._run(feeds)
        except Exception as exc:  # the model failed on this batch: every request in it gets the error
            for r in batch:
                r.loop.call_soon_threadsafe(_set_exception, r.future, exc)
            return
        finally:
            self._busy_until = 0.0
        ended = self.clock()
        service = ended - t0
        self.latency.observe(rows, service)
        if 0 < budget < service and rows > 1:
            # the batch itself overran what the SLO left it: multiplicative decrease. A batch that started with
            # nothing left (a long X-Deadline-Ms kept it queued past the SLO) was late by waiting, whatever its size
            self.cap = max(1, math.floor(self.cap * 0.75))
        elif more_waiting and rows >= self.cap:
            self.cap = min(self.max_batch, self.cap + 1)  # additive increase while the queue wants more
        self.stats.batches += 1
        self.stats.rows += rows
        if self._on_batch is not None:
            self._on_batch(rows, service, self._rows_queued)
        start = 0
        by_loop: dict[Any, list[Any]] = {}
        for r in batch:
            end = start + r.rows
            by_loop.setdefault(r.loop, []).append(
                (r.future, {n: o[start:end] for n, o in zip(self._outputs, outs, strict=True)}, r.due)
            )
            start = end
        for loop, items in by_loop.items():  # one wake-up of the event loop per batch, not per request
            loop.call_soon_threadsafe(self._deliver, loop, items, ended)

    def _deliver(self, loop: asyncio.AbstractEventLoop, items: list[tuple[Any, ...]], ended: float) -> None:
        """On the event loop: resolve the batch's futures, then see when their handlers are through — the probe
        is queued behind the handlers' wake-ups, so it runs once they have encoded their replies."""
        for fut, res, _ in items:
            if not fut.done():
                fut.set_result(res)
        loop.call_soon(self._returned, ended, [due for _, _, due in items])

    def _returned(self, ended: float, dues: list[float]) -> None:
        self.slack.observe(self.clock(), ended, dues)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
