"""Train under a memory budget: Checkmate-style rematerialization for PyTorch modules.

``plan(module, example_inputs, budget_mb)`` traces one training step at aten level, coarsens it to the
modules a checkpoint can wrap, and solves Checkmate's MILP (HiGHS) — or its LP relaxation with two-phase
rounding, or segment by segment — for the cheapest schedule whose predicted peak fits; ``apply(module, plan)``
returns a module sharing the parameters that trains with that schedule; ``max_batch`` finds the largest batch
whose step fits.
"""

from __future__ import annotations

from typing import Any

from chipfit.remat.apply import apply
from chipfit.remat.plan import BudgetTooSmall, Plan, RematError, plan

__all__ = ["BudgetTooSmall", "Plan", "RematError", "apply", "max_batch", "plan"]


def __getattr__(name: str) -> Any:
    if name == "max_batch":
        from chipfit.remat.batch import max_batch

        return max_batch
    raise AttributeError(f"module 'chipfit.remat' has no attribute {name!r}")
