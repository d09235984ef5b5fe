"""What an explore run has spent, persisted in the study as it goes.

Each trial is charged from its start to its outcome (times its share of the machine); the run's wall time is
the clock since it started plus what earlier runs of the same study spent. Both are written to the study's
database *ahead* of time: every half ``every_s`` the ledger records each running trial's charge and the
run's wall time as they will be ``every_s`` from now. A run killed with ``kill -9`` has therefore already
recorded at least what it spent — each trial's time since its last report included — and the same command
resumes from there, so a resumed ``--budget 2h`` never spends more than two hours (it may count up to
``every_s`` per trial more than was spent). That holds while the driver's loop calls ``tick`` at least every
half ``every_s`` (it polls far more often); a loop stalled longer than that (a blocked database, a slow
callback) at the moment of a ``kill -9`` can leave up to the stall's length uncounted.

Each record also says until when it counts (``recorded_until``, wall-clock seconds since the epoch): a
running trial whose record is still current belongs to a live run, one whose record ran out was left
running by a killed one (``studies.open_study``).
"""

from __future__ import annotations

import math
from typing import Any

from chipfit.explore.budget import CostMeter
from chipfit.explore.clock import Clock

__all__ = ["RECORDED_UNTIL", "Ledger", "charged_device_s"]

WALL_ATTR = "wall_s"  # the study's user attribute: wall seconds spent by all runs so far
RECORDED_UNTIL = "recorded_until"  # a trial's user attribute: its record counts until then (epoch seconds)


def charged_device_s(trial: Any) -> float:
    """The device-seconds a trial (an Optuna FrozenTrial) has been charged."""
    attrs = trial.user_attrs
    return float(attrs.get("charged_device_s", attrs.get("charged_s", 0.0)) or 0.0)


class Ledger:
    """Charges trials to the meter and keeps the study's record of the spending current.

    ``study`` is an Optuna study; trials are Optuna ``Trial`` objects (from ``study.ask()``)."""

    def __init__(self, study: Any, meter: CostMeter, share: float, clock: Clock, every_s: float = 1.0) -> None:
        if not (every_s > 0 and math.isfinite(every_s)):
            raise ValueError(f"Ledger.every_s must be a positive number of seconds, got {every_s!r}.")
        self.study, self.meter, self.share, self.clock, self.every_s = study, meter, share, clock, every_s
        self.wall_before = float(study.user_attrs.get(WALL_ATTR, 0.0))  # earlier runs of this study
        trials = study.get_trials(deepcopy=False)
        meter.device_s = sum(charged_device_s(t) for t in trials)
        meter.units = sum(float(t.user_attrs.get("charged_units", 0.0) or 0.0) for t in trials)
        self.started = clock.monotonic()
        meter.wall_s = self.wall_before
        self._covered = -math.inf  # the clock up to which the record already counts
        self._t0: dict[int, tuple[Any, float]] = {}  # trial number -> (trial, start)

    def begin(self) -> None:
        """The run's clock starts now (after its set-up: the runner's warm-up is not spent on trials)."""
        self.started = self.clock.monotonic()

    def wall(self) -> float:
        """Wall seconds spent by this study, this run included."""
        return self.wall_before + self.clock.monotonic() - self.started

    def elapsed(self, trial: Any) -> float:
        return self.clock.monotonic() - self._t0[trial.number][1]

    def running_device_s(self) -> float:
        """Device-seconds the running trials have used so far (not yet on the meter)."""
        now = self.clock.monotonic()
        return sum((now - t0) * self.share for _, t0 in self._t0.values())

    def start(self, trial: Any) -> None:
        self._t0[trial.number] = (trial, self.clock.monotonic())
        self._record(trial, self.every_s, ahead=self.every_s)  # a kill before the next tick still counts it

    def tick(self) -> None:
        """Record the spending ahead, when what is recorded runs out within half of ``every_s``."""
        self.meter.wall_s = self.wall()
        now = self.clock.monotonic()
        if now < self._covered - self.every_s / 2:
            return
        self._covered = now + self.every_s
        self.study.set_user_attr(WALL_ATTR, self.wall() + self.every_s)
        for trial, t0 in self._t0.values():
            self._record(trial, now - t0 + self.every_s, ahead=self.every_s)

    def finish(self, trial: Any, units: float = 0.0) -> float:
        """Charge a trial that ended its exact time and the resource ``units`` it trained; returns its seconds."""
        _, t0 = self._t0.pop(trial.number)
        seconds = self.clock.monotonic() - t0
        self.meter.charge(seconds * self.share, units=units)
        self._record(trial, seconds)
        trial.set_user_attr("charged_units", units)
        return seconds

    def close(self) -> None:
        """The run ends: record its exact wall time."""
        self.meter.wall_s = self.wall()
        self.study.set_user_attr(WALL_ATTR, self.meter.wall_s)

    def _record(self, trial: Any, seconds: float, ahead: float = 0.0) -> None:
        device_s = seconds * self.share
        trial.set_user_attr(RECORDED_UNTIL, self.clock.time() + ahead)
        trial.set_user_attr("charged_s", seconds)
        trial.set_user_attr("charged_device_s", device_s)
        trial.set_user_attr("charged_usd", device_s / 3600.0 * self.meter.usd_per_hour)
