"""``plan(module, example_inputs, budget_mb)``: the cheapest checkpoint schedule whose step fits the budget.

1. :func:`chipfit.remat.graph.trace` records the step at aten level and coarsens it to units (at most
   ``max_units``, 64 by default).
2. The plain step's peak is simulated (:mod:`chipfit.remat.simulate`); at or under the budget nothing is
   recomputed (solver ``"none"``).
3. The Checkmate MILP (:mod:`chipfit.remat.solver`) chooses which units to recompute, on the graph of
   2·units + 1 nodes. ``solver="auto"`` picks by the number of units: the **MILP up to 12 units** (25 nodes),
   the **LP relaxation with two-phase rounding up to 64 units** (129 nodes), and above that the
   **segmented** solve: runs of 12 units, front to back, each a MILP whose memory starts with what the earlier
   runs keep and leaves room for the later runs' inputs.
4. A unit u that the schedule recomputes in the stage of unit w becomes a checkpoint reaching from u to w
   (adjacent ``nn.Sequential`` children share one; elsewhere each unit is wrapped alone), and the schedule's
   peak is simulated as PyTorch runs it. Over the budget, checkpoints are split in two while that lowers the
   peak (Checkmate may recompute a run in several stages; one checkpoint recomputes it at once); still over,
   the solver's budget is lowered by the excess and it solves again (at most 6 rounds, sharing
   ``time_limit_s``); the LP rounding also tries every threshold's schedule. If none fits, the least-memory
   schedule of a few fixed ones (every unit alone, Sequential runs of 2 … 2√n+2 units) is used when it fits
   (noted in ``Plan.notes``); else :class:`BudgetTooSmall` names the minimum. The schedule is then polished:
   checkpoints (or their first or last units) are dropped while the simulated peak stays within the budget,
   the move saving the most recomputation first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from chipfit.errors import ChipfitError, SpecError
from chipfit.remat import schedule
from chipfit.remat.graph import StepGraph, trace
from chipfit.remat.simulate import OPTIMIZER_STATES, Simulation, segments_of, simulate

__all__ = ["LP_MAX_UNITS", "MILP_MAX_UNITS", "SOLVERS", "BudgetTooSmall", "Plan", "RematError", "plan"]

MB = 2**20
MILP_MAX_UNITS = 12
LP_MAX_UNITS = 64
SOLVERS = ("auto", "milp", "lp-rounding", "segmented")


class RematError(ChipfitError):
    """A module or request that chipfit.remat cannot plan for."""


class BudgetTooSmall(RematError):
    """No schedule fits: ``minimum_mb`` is the least peak chipfit found for this module and input."""

    def __init__(self, budget_mb: float, minimum_mb: float, static_mb: float) -> None:
        self.budget_mb = budget_mb
        self.minimum_mb = minimum_mb
        super().__init__(
            f"--budget-mb {budget_mb:g}: no checkpoint schedule fits; the least peak found for this module and "
            f"input is {minimum_mb:.1f} MB (of which {static_mb:.1f} MB parameters, gradients, optimizer state and "
            f"inputs). Give a budget of at least {math.ceil(minimum_mb)} MB, or a smaller batch."
        )


@dataclass(frozen=True)
class Plan:
    """A checkpoint schedule and its predictions (MB = 2**20 bytes; the peak of a whole training step:
    parameters, gradients, optimizer state, kept and recomputed activations, the backward's transients)."""

    budget_mb: float
    peak_mb: float
    baseline_peak_mb: float
    overhead: float  # predicted recomputed compute / (forward + backward compute)
    recomputed: tuple[str, ...]  # the units (module paths, "a..b" for runs) whose forward runs twice
    optimality_gap: float | None
    solver: str  # "milp" | "lp-rounding" | "segmented" | "none"
    solve_s: float  # seconds in the solvers (the trace and the simulations come on top)
    min_budget_mb: float
    n_nodes: int  # nodes of the solver's graph (2·units + 1)
    checkpoints: tuple[tuple[str, ...], ...] = ()  # module paths per checkpoint (what apply wraps)
    n_units: int = 0
    aten_ops: int = 0
    optimizer: str = "sgd"
    cost_source: str = "profiled"
    solver_cost_ms: float | None = None  # the solver's objective Σ R·cost (whole schedule, milliseconds)
    peak_at: str = ""  # where the predicted peak is: forward, backward <unit>, optimizer
    notes: tuple[str, ...] = field(default_factory=tuple)
    # the solver's schedules did not fit (time limit, rounding): the least-memory fixed schedule, polished, is used;
    # ``solver`` still names the solver that was tried
    fallback: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recomputed"] = list(self.recomputed)
        d["checkpoints"] = [list(c) for c in self.checkpoints]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["recomputed"] = tuple(kw.get("recomputed", ()))
        kw["checkpoints"] = tuple(tuple(c) for c in kw.get("checkpoints", ()))
        kw["notes"] = tuple(kw.get("notes", ()))
        return cls(**kw)


def plan(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    budget_mb: float,
    loss_fn: Callable[[Any], Any] | None = None,
    solver: str = "auto",
    time_limit_s: float = 30.0,
    optimizer: str = "sgd",
    max_units: int = 64,
) -> Plan:
    """The cheapest schedule whose predicted step peak is at most ``budget_mb`` (see the module docstring)."""
    if not isinstance(budget_mb, (int, float)) or not budget_mb > 0:
        raise SpecError(f"budget_mb must be a positive number of MB (2**20 bytes); got {budget_mb!r}.")
    if solver not in SOLVERS:
        raise SpecError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}.")
    if optimizer not in OPTIMIZER_STATES:
        raise SpecError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer!r}.")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    graph = trace(module, example_inputs, loss_fn, max_units=max_units)
    base = simulate(graph, [], optimizer)
    common: dict[str, Any] = dict(
        budget_mb=float(budget_mb),
        baseline_peak_mb=base.peak_bytes / MB,
        n_nodes=2 * graph.n + 1,
        n_units=graph.n,
        aten_ops=graph.aten_ops,
        optimizer=optimizer,
        cost_source=graph.cost_source,
    )
    budget = budget_mb * MB
    fallback, fallback_sim = _least_memory(graph, optimizer)
    min_mb = min(fallback_sim.peak_bytes, base.peak_bytes) / MB
    if base.peak_bytes <= budget:
        return Plan(peak_mb=base.peak_bytes / MB, overhead=0.0, recomputed=(), optimality_gap=0.0, solver="none",
                    solve_s=0.0, min_budget_mb=min_mb, peak_at=base.where, **common)  # fmt: skip
    if solver == "auto":
        solver = "milp" if graph.n <= MILP_MAX_UNITS else "lp-rounding" if graph.n <= LP_MAX_UNITS else "segmented"
    t_solve = time.perf_counter()
    found = schedule.search(graph, budget, solver, optimizer, deadline=t_solve + time_limit_s)
    solve_s = time.perf_counter() - t_solve
    notes: list[str] = list(found.notes)
    if found.segments is None:
        if fallback_sim.peak_bytes > budget:
            static = fallback_sim.static_bytes + graph.param_bytes
            raise BudgetTooSmall(float(budget_mb), min_mb, static / MB)
        notes.append(f"the {solver} schedules did not fit; the least-memory fixed schedule is used, polished")
        segs, sim = schedule.polish(graph, fallback, budget, optimizer)
        gap, cost, used_fallback = None, None, True
    else:
        assert found.simulation is not None
        segs, sim, gap, cost = found.segments, found.simulation, found.gap, found.cost
        solver, used_fallback = found.solver or solver, False
    min_mb = min(min_mb, sim.peak_bytes / MB)
    return Plan(
        peak_mb=sim.peak_bytes / MB,
        overhead=sim.recompute_ms / max(graph.fwd_ms + graph.bwd_ms, 1e-9),
        recomputed=tuple(graph.units[u].name for seg in segs for u in seg),
        optimality_gap=gap,
        solver=solver,
        solve_s=solve_s,
        min_budget_mb=min_mb,
        checkpoints=tuple(tuple(p for u in seg for p in graph.units[u].members) for seg in segs),
        solver_cost_ms=cost,
        peak_at=sim.where,
        notes=tuple(notes),
        fallback=used_fallback,
        **common,
    )


def _least_memory(graph: StepGraph, optimizer: str) -> tuple[list[tuple[int, ...]], Simulation]:
    """The least-peak schedule among fixed ones: every unit checkpointed alone, or Sequential runs of one length
    (1 … 2√n+2, around the √n of a chain's memory optimum)."""
    best: tuple[list[tuple[int, ...]], Simulation] | None = None
    runs = segments_of(graph, set(range(graph.n)))
    longest = max((len(r) for r in runs), default=1)
    lengths = set(range(1, min(longest, 2 * math.isqrt(longest) + 2) + 1))
    for length in sorted(lengths):
        segs = [r[i : i + length] for r in runs for i in range(0, len(r), length)]
        sim = simulate(graph, segs, optimizer)
        if best is None or sim.peak_bytes < best[1].peak_bytes:
            best = (segs, sim)
    assert best is not None
    return best
