"""What admission keeps free at the end of each request's deadline, beyond the model's own time.

A request's server time is the model's queue and run (the latency model predicts those) and the server's own
time after the run: the event loop, busy with the requests that arrived meanwhile, before it wakes the handler,
then the reply's encoding. Under a burst on a busy CPU that return path is most of a request's time, and the
server's latency histogram counts it. ``Slack`` measures it and learns the rest:

- the **return lag**: the largest lag, from a batch's end until its handlers are through, of the batches that
  ended in the last ``horizon`` seconds (a burst's lag is what the next requests will meet; an old one ages
  out, so a quiet server reserves nothing);
- a **margin learned from misses**, a stochastic quantile tracker: each admitted request that still ended past
  its deadline adds ``step``, each on time takes ``step × target / (1 − target)`` off, so the margin settles
  where a ``target`` fraction (1%: the SLO is a p99) ends late. It covers what no estimate sees coming (a
  descheduled process, a GC pause) by keeping fewer requests waiting; it is capped at half the SLO so that a
  request meeting an empty queue is still admitted and measured, and it decays when nothing was delivered
  for a horizon.

Times are passed in by the caller (the batcher's injected clock); nothing here reads a clock.
"""

from __future__ import annotations

import collections

__all__ = ["Slack"]


class Slack:
    def __init__(self, slo_s: float, horizon_s: float | None = None, target: float = 0.01) -> None:
        if not 0 < target < 1:
            raise ValueError(f"the share of late requests to aim for must be in (0, 1); got {target!r}.")
        self.slo_s, self.target = slo_s, target
        self.horizon_s = horizon_s if horizon_s is not None else max(0.05, 10 * slo_s)
        self.step_s = slo_s / 20
        self.margin_s = 0.0
        self.admitted = self.late = 0  # requests delivered, and those of them past their deadline
        self._lags: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag), oldest first
        self._last = 0.0

    def observe(self, now: float, ended: float, dues: list[float]) -> None:
        """A batch that ended at ``ended`` had its handlers through at ``now``; ``dues`` are its requests' deadlines."""
        self._lags.append((now, max(0.0, now - ended)))
        late = sum(now > d for d in dues)
        on_time = len(dues) - late
        self.admitted += len(dues)
        self.late += late
        m = self.margin_s + self.step_s * (late - on_time * self.target / (1 - self.target))
        self.margin_s = min(self.slo_s / 2, max(0.0, m))
        self._last = now

    def return_lag(self, now: float) -> float:
        lags = self._lags
        while lags and lags[0][0] < now - self.horizon_s:
            lags.popleft()
        return max((lag for _, lag in lags), default=0.0)

    def reserve(self, now: float) -> float:
        """Seconds to keep free at the end of a deadline admitted now: the recent return lag and the margin."""
        quiet = now - self._last
        if quiet > self.horizon_s:  # nothing delivered for a while: what was learned under load is stale
            self.margin_s *= 0.5 ** (quiet / self.horizon_s)
            self._last = now
        return self.return_lag(now) + self.margin_s
