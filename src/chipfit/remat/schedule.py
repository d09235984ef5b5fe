"""The search loop between the Checkmate solvers and the simulation of what PyTorch will run.

The solvers' memory model (one size per node, no transient gradients) is coarser than the simulation's, so
a solved schedule may simulate over the budget; then the solver's activation budget is lowered by the excess
and it solves again, at most ``MAX_ROUNDS`` times and within the deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from chipfit.remat.graph import StepGraph
from chipfit.remat.simulate import Simulation, releases, segments_of, segments_reaching, simulate, static_bytes
from chipfit.remat.solver import Solution, checkmate_graph, solve_lp_rounding, solve_milp

__all__ = ["Found", "polish", "search"]

MB = 2**20
MAX_ROUNDS = 6
SEGMENT_UNITS = 12


@dataclass
class Found:
    segments: list[tuple[int, ...]] | None
    simulation: Simulation | None = None
    gap: float | None = None
    cost: float | None = None
    notes: list[str] = field(default_factory=list)
    solver: str = ""


def search(graph: StepGraph, budget: float, solver: str, optimizer: str, deadline: float) -> Found:
    """The cheapest schedule (by simulated recomputation) the solver finds whose simulated peak fits."""
    # Checkmate's constant: parameters, optimizer state, buffers, inputs (the parameter gradients are in the
    # graph, stage by stage, as the backward allocates them)
    const = static_bytes(graph, optimizer)
    # and what the glue between units allocates and the step keeps (no node of the graph holds it)
    const += sum(graph.sizes[s] for s in graph.savers if graph.creator.get(s, -1) == -1)
    act_mb = (budget - const) / MB
    notes: list[str] = []
    best: Found | None = None
    for r in range(MAX_ROUNDS):
        used = solver
        left = deadline - time.perf_counter()
        if left <= 0 or act_mb <= 0:
            break
        # a share of what is left, so that a round over the budget leaves time for the next ones
        sol = _solve(graph, solver, act_mb, left / max(1.0, (MAX_ROUNDS - r) / 2))
        if sol.status in ("infeasible", "no-solution") and solver == "milp":
            notes.append(f"milp at an activation budget of {act_mb:.1f} MB: {sol.status}; LP rounding tried")
            sol = _solve(graph, "lp-rounding", act_mb, deadline - time.perf_counter())
            used = "lp-rounding"
        if sol.status in ("infeasible", "no-solution"):
            notes.append(f"{used} at an activation budget of {act_mb:.1f} MB: {sol.status}")
            break
        if sol.status == "time-limit":
            notes.append(f"{solver}: time limit reached, best schedule found so far (gap {sol.gap})")
        excess = None
        for rec in sol.schedules or (sol.recomputed,):
            segs, sim = _repair(graph, segments_reaching(graph, rec), budget, optimizer)
            if sim.peak_bytes <= budget:
                if best is None or best.simulation is None or sim.recompute_ms < best.simulation.recompute_ms:
                    best = Found(segs, sim, sol.gap, sol.cost, solver=used)
            else:
                over = sim.peak_bytes - budget
                excess = over if excess is None else min(excess, over)
        if best is not None:
            break
        assert excess is not None
        act_mb -= max(excess / MB, 0.1 * act_mb)
    if best is None:
        return Found(None, notes=notes)
    assert best.segments is not None
    best.segments, best.simulation = polish(graph, best.segments, budget, optimizer)
    best.notes = notes
    return best


def polish(
    graph: StepGraph, segs: list[tuple[int, ...]], budget: float, optimizer: str, max_moves: int = 200
) -> tuple[list[tuple[int, ...]], Simulation]:
    """Greedy descent on the simulated schedule: drop a checkpoint, or its first or last unit, while the peak
    stays within the budget, taking the move that saves the most recomputation each time."""
    sim = simulate(graph, segs, optimizer)
    for _ in range(max_moves):
        best: tuple[list[tuple[int, ...]], Simulation] | None = None
        for k, seg in enumerate(segs):
            for new in ((), seg[1:], seg[:-1]):
                trial = [*segs[:k], *([new] if new else []), *segs[k + 1 :]]
                tsim = simulate(graph, trial, optimizer)
                if tsim.peak_bytes <= budget and tsim.recompute_ms < (best[1] if best else sim).recompute_ms:
                    best = (trial, tsim)
        if best is None:
            break
        segs, sim = best
    return segs, sim


def _repair(
    graph: StepGraph, segs: list[tuple[int, ...]], budget: float, optimizer: str
) -> tuple[list[tuple[int, ...]], Simulation]:
    """Split checkpoints in two while the schedule is over the budget and a split lowers its peak (the same
    units are recomputed, at the cost of keeping one more checkpoint input). Checkmate may recompute a run in
    several stages, freeing in between; one PyTorch checkpoint recomputes it all at once: splitting the run
    approximates the stages."""
    sim = simulate(graph, segs, optimizer)
    while sim.peak_bytes > budget:
        best: tuple[list[tuple[int, ...]], Simulation] | None = None
        for k, seg in enumerate(segs):
            if len(seg) < 2:
                continue
            half = len(seg) // 2
            trial = [*segs[:k], seg[:half], seg[half:], *segs[k + 1 :]]
            tsim = simulate(graph, trial, optimizer)
            if tsim.peak_bytes < (best[1] if best else sim).peak_bytes:
                best = (trial, tsim)
        if best is None:
            break
        segs, sim = best
    return segs, sim


def _solve(graph: StepGraph, solver: str, act_mb: float, time_limit_s: float) -> Solution:
    if solver == "milp":
        return solve_milp(checkmate_graph(graph), act_mb, time_limit_s)
    if solver == "lp-rounding":
        return solve_lp_rounding(checkmate_graph(graph), act_mb, time_limit_s)
    return _segmented(graph, act_mb, time_limit_s)


def _segmented(graph: StepGraph, act_mb: float, time_limit_s: float) -> Solution:
    """Runs of ``SEGMENT_UNITS`` units solved front to back by the MILP: each run's budget is less what the
    earlier runs keep (as solved) and what the later runs keep at the least (checkpointed in runs of √length)."""
    t0 = time.perf_counter()
    chunks = [list(range(i, min(i + SEGMENT_UNITS, graph.n))) for i in range(0, graph.n, SEGMENT_UNITS)]
    length = max(1, round(math.sqrt(SEGMENT_UNITS)))
    thrifty = [
        seg[i : i + length] for seg in segments_of(graph, set(range(graph.n))) for i in range(0, len(seg), length)
    ]
    least = releases(graph, thrifty)
    recomputed: set[tuple[int, int]] = set()
    cost = 0.0
    for k, chunk in enumerate(chunks):
        kept = _kept_before(graph, recomputed, chunk[0])
        later = chunks[k + 1][0] if k + 1 < len(chunks) else graph.n
        reserve = sum(graph.sizes[s] for s, r in least.items() if r >= later)
        left = time_limit_s - (time.perf_counter() - t0)
        sol = solve_milp(checkmate_graph(graph, chunk), act_mb - (kept + reserve) / MB, left / (len(chunks) - k))
        if sol.status in ("infeasible", "no-solution"):
            return Solution(frozenset(), float("inf"), sol.status, None, time.perf_counter() - t0)
        recomputed |= {(chunk[u], chunk[w]) for u, w in sol.recomputed}
        cost += sol.cost
    return Solution(frozenset(recomputed), cost, "optimal", None, time.perf_counter() - t0)


def _kept_before(graph: StepGraph, recomputed: set[tuple[int, int]], first: int) -> int:
    """Bytes kept for the backward by units before ``first`` under the schedule chosen so far."""
    release = releases(graph, segments_reaching(graph, {(u, w) for u, w in recomputed if u < first}))
    return sum(graph.sizes[s] for s, r in release.items() if r < first)
