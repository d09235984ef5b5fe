"""The clock explore's budget accounting, deadline scheduling and trials read: the system's by default, a
manual one in tests (so no verdict depends on the machine's speed)."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for elapsed times within one process."""

    def time(self) -> float:
        """Seconds since the epoch, for deadlines that cross processes."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
