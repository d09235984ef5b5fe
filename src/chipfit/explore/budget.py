"""Budgets for ``chipfit explore``: dollars (``200usd``), device-hours (``5gpu-h``, ``10cpu-h``), wall
time (``2h``) or resource units (``500units``: epochs or steps, as the space's ``resource`` counts them), and
the meter that charges each trial for its measured time at the target's $/hour.

Device-hours count the seconds trials run (times the devices each holds); wall time counts the clock since
the run started, whatever runs in parallel; dollars are device-hours times the target's price. Resource units
count the units the trials trained (the last step each reported): a budget that does not depend on the
machine's speed or load, so runs on a busy machine spend the same as on an idle one. Every charge is also kept
in dollars, so a run in any unit says what it cost.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from chipfit.errors import SpecError

__all__ = ["Budget", "CostMeter", "parse_budget"]

_RE = re.compile(
    r"^\s*(?P<d>\$)?\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<u>usd|\$|dollars?|gpu-?h|cpu-?h|units?|h|hr|hours?|m|min|s|sec|d)?\s*$",
    re.I,
)
_WALL = {"h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0}
_WALL["d"] = 86400.0


@dataclass(frozen=True)
class Budget:
    amount: float  # in ``unit``
    unit: str  # "usd", "gpu-h", "cpu-h", "s" (wall seconds) or "units" (resource units trained)

    def __str__(self) -> str:
        return f"{self.amount:g} {self.unit}" if self.unit != "usd" else f"${self.amount:g}"


def parse_budget(text: str) -> Budget:
    """``200usd``, ``$200``, ``5gpu-h``, ``10cpu-h``, ``2h``, ``90m``, ``600s``, ``500units``."""
    m = _RE.match(str(text))
    if not m or float(m.group("n")) <= 0 or bool(m.group("d")) == bool(m.group("u")):
        raise SpecError(
            f"--budget must be a positive amount of dollars (200usd), device-hours (5gpu-h, 10cpu-h), wall "
            f"time (2h, 90m) or resource units (500units); got {text!r}."
        )
    n, u = float(m.group("n")), (m.group("u") or "usd").lower().replace("-", "")
    if u in ("usd", "$", "dollar", "dollars"):
        return Budget(n, "usd")
    if u in ("gpuh", "cpuh"):
        return Budget(n, u[:3] + "-h")
    if u in ("unit", "units"):
        return Budget(n, "units")
    return Budget(n * _WALL[u], "s")


class CostMeter:
    """What a run has spent, in the budget's unit and in dollars. ``usd_per_hour`` is the target's price for
    one device; ``wall_s`` is supplied by the caller (the run's elapsed time, resumed runs included)."""

    def __init__(self, budget: Budget, usd_per_hour: float, device: str = "cpu") -> None:
        if budget.unit == "gpu-h" and device != "gpu":
            raise SpecError("--budget in gpu-h needs a GPU target (--target); on CPU use cpu-h, usd or wall time.")
        self.budget, self.usd_per_hour = budget, usd_per_hour
        self.device_s = 0.0  # device-seconds charged to trials
        self.wall_s = 0.0
        self.units = 0.0  # resource units the trials trained (what a budget in units counts)

    def charge(self, seconds: float, devices: float = 1.0, units: float = 0.0) -> None:
        self.device_s += max(0.0, seconds) * devices
        self.units += max(0.0, units)

    @property
    def spent_usd(self) -> float:
        return self.device_s / 3600.0 * self.usd_per_hour

    @property
    def spent(self) -> float:
        """Spent, in the budget's unit."""
        if self.budget.unit == "usd":
            return self.spent_usd
        if self.budget.unit == "s":
            return self.wall_s
        if self.budget.unit == "units":
            return self.units
        return self.device_s / 3600.0

    @property
    def left(self) -> float:
        return max(0.0, self.budget.amount - self.spent)

    def seconds_left(self) -> float:
        """Device-seconds (or wall seconds) the budget still pays for (unbounded for a budget in units: it
        counts units, not time)."""
        if self.budget.unit == "units":
            return math.inf
        if self.budget.unit == "usd":
            return self.left / self.usd_per_hour * 3600.0
        if self.budget.unit == "s":
            return self.left
        return self.left * 3600.0

    def to_dict(self) -> dict[str, float | str]:
        return {
            "budget": self.budget.amount,
            "spent": self.spent,
            "left": self.left,
            "unit": self.budget.unit,
            "spent_usd": self.spent_usd,
        }
