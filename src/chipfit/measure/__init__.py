"""Measurement: an isolated worker process per candidate, timing statistics, memory, quality."""

from chipfit.measure.measurement import STATUSES, Measurement
from chipfit.measure.runner import run_isolated

__all__ = ["STATUSES", "Measurement", "run_isolated"]
