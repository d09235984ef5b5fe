"""Checkmate's rematerialization MILP (Jain et al., MLSys 2020) over the unit graph, solved with HiGHS.

The graph (:func:`checkmate_graph`) has a forward node per unit, a loss node and a backward node per unit, in
topological order (forward units, loss, backward units in reverse). Edges: a unit's forward reads its inputs'
forwards; a backward reads the forwards whose outputs its unit saved and the backwards of its consumers. A
forward node's memory is what its unit allocates that the step keeps (saved for backward, or read by another
unit); a backward node's is the gradients of its unit's inputs; each stage also holds the parameter gradients
of the backwards before it (lowering that stage's budget). Costs are the profiled milliseconds.

The model (:func:`solve_milp`), with T = the number of nodes and one stage per node:

- R[t,i] ∈ {0,1}: node i is computed in stage t; S[t,i] ∈ {0,1}: i's output is kept from stage t-1 into t;
  FREE[t,(i,k)] ∈ {0,1}: i's output is freed after k in stage t; U[t,k] ≥ 0: memory after k in stage t.
- minimise Σ R[t,i]·cost_i subject to R[t,t] = 1, R and S lower-triangular (frontier-advancing stages),
  R[t,j] ≤ R[t,i] + S[t,i] for each edge (i,j), S[t+1,i] ≤ R[t,i] + S[t,i],
  U[t,0] = R[t,0]·m_0 + Σ_i S[t,i]·m_i, U[t,k+1] = U[t,k] + R[t,k+1]·m_(k+1) − Σ_(i,k) m_i·FREE[t,(i,k)],
  U ≤ budget, and FREE linearised through the number of hazards (1 − R[t,k] + S[t+1,i] + Σ_(j>k users of i)
  R[t,j]): 1 − FREE ≤ hazards ≤ κ(1 − FREE).

:func:`solve_lp_rounding` solves the LP relaxation at 0.9× the budget and rounds in two phases (Checkmate's
Alg. 2): S is rounded at a threshold (0.1…0.9 are all tried), then the cheapest R for that S is built from the
identity by restoring (1c) and then (1b) in reverse topological order.

Both return the units whose forward runs more than once: the schedule's recomputed units.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import highspy
import numpy as np

from chipfit.remat.graph import StepGraph

__all__ = ["CheckmateGraph", "Solution", "checkmate_graph", "solve_lp_rounding", "solve_milp"]

MB = 2**20


@dataclass(frozen=True)
class CheckmateGraph:
    n_units: int
    cost: tuple[float, ...]  # per node
    mem: tuple[float, ...]  # per node, MB
    edges: tuple[tuple[int, int], ...]  # (i, k), i < k
    stage_mb: tuple[float, ...] = ()  # per stage: memory outside the nodes (the parameter gradients so far)

    @property
    def size(self) -> int:
        return len(self.cost)


@dataclass(frozen=True)
class Solution:
    recomputed: frozenset[tuple[int, int]]  # (unit u, unit w): u is recomputed for w (see _recomputed)
    cost: float  # Σ R·cost over the whole schedule (ms)
    status: str  # "optimal", "time-limit", "infeasible", "no-solution"
    gap: float | None  # relative MIP gap, or (rounded − LP bound) / rounded for the rounding
    solve_s: float
    schedules: tuple[frozenset[tuple[int, int]], ...] = ()  # LP rounding: each threshold's, cheapest first
    rs: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # LP rounding: (R, S) of each, cheapest first


def checkmate_graph(graph: StepGraph, units: list[int] | None = None) -> CheckmateGraph:
    """The forward/loss/backward node graph of ``units`` (all of them by default; a segment for the segmented
    solver, whose outside dependencies count as already in memory)."""
    units = list(range(graph.n)) if units is None else units
    pos = {u: k for k, u in enumerate(units)}
    n = len(units)
    fwd = dict(pos)
    loss = n
    bwd = {u: n + 1 + (n - 1 - k) for u, k in pos.items()}
    readers: dict[int, set[int]] = {}
    for u in units:
        for d in graph.deps[u]:
            readers.setdefault(d, set()).add(u)
    edges: set[tuple[int, int]] = set()
    needs = _backward_needs(graph)
    for u in units:
        for d in graph.deps[u]:
            if d in pos:
                edges.add((fwd[d], fwd[u]))
                edges.add((bwd[u], bwd[d]))
        for v in needs[u]:
            if v in pos:
                edges.add((fwd[v], bwd[u]))
        if not any(r in pos for r in readers.get(u, ())) or u == units[-1]:
            edges.add((fwd[u], loss))
            edges.add((loss, bwd[u]))
    kept = {s for s in graph.savers}
    cost = [0.0] * (2 * n + 1)
    mem = [0.0] * (2 * n + 1)
    for u in units:
        un = graph.units[u]
        read_later = set().union(*(graph.units[r].inputs for r in readers.get(u, ()))) if u in readers else set()
        held = {s for s in un.created if s in kept or s in read_later}
        cost[fwd[u]] = max(un.fwd_ms, 1e-6)
        cost[bwd[u]] = max(un.bwd_ms, 1e-6)
        mem[fwd[u]] = sum(graph.sizes[s] for s in held) / MB
        mem[bwd[u]] = sum(graph.sizes.get(s, 0) for s in un.inputs) / MB
    # the parameter gradients: allocated by each unit's backward and kept to the optimizer step
    stage = [0.0] * (2 * n + 1)
    for u in units:
        for t in range(bwd[u], 2 * n + 1):
            stage[t] += graph.units[u].param_bytes / MB
    return CheckmateGraph(n, tuple(cost), tuple(mem), tuple(sorted(edges)), tuple(stage))


def _backward_needs(graph: StepGraph) -> list[set[int]]:
    """Unit -> the units whose forward outputs its backward reads (the storages its ops saved, by creator;
    a saved storage made by glue counts as made by the unit's inputs)."""
    needs: list[set[int]] = [set() for _ in range(graph.n)]
    for s, savers in graph.savers.items():
        c = graph.creator.get(s, -1)
        for v in savers:
            if v >= 0:
                needs[v].update({c} if c >= 0 else graph.deps[v])
    return needs


def _highs() -> highspy.Highs:
    """A HiGHS instance; its banner (printed once, on stdout) is kept out of the caller's stdout."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
    return h


_BANNER_SHOWN = False


class _Model:
    """Variable indices of R, S, U, FREE (lower-triangular only) and the rows, for one HiGHS model."""

    def __init__(self, g: CheckmateGraph, budget_mb: float, integral: bool) -> None:
        T = g.size
        self.g, self.T = g, T
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.obj: list[float] = []
        self.R = {(t, i): self._var(g.cost[i], 1.0 if i == t else 0.0, 1.0) for t in range(T) for i in range(t + 1)}
        self.S = {(t, i): self._var(0.0, 0.0, 1.0) for t in range(1, T) for i in range(t)}
        room = [budget_mb - (g.stage_mb[t] if g.stage_mb else 0.0) for t in range(T)]
        self.U = {(t, k): self._var(0.0, 0.0, max(room[t], 0.0)) for t in range(T) for k in range(t + 1)}
        self.F = {(t, e): self._var(0.0, 0.0, 1.0) for t in range(T) for e, (_, k) in enumerate(g.edges) if k <= t}
        self.n_int = len(self.R) + len(self.S) + len(self.F) if integral else 0
        self.rows: list[tuple[float, float, list[int], list[float]]] = []
        self._constraints()

    def _var(self, cost: float, lb: float, ub: float) -> int:
        self.obj.append(cost)
        self.lb.append(lb)
        self.ub.append(ub)
        return len(self.obj) - 1

    def _row(self, lo: float, hi: float, terms: dict[int, float]) -> None:
        self.rows.append((lo, hi, list(terms), list(terms.values())))

    def _s(self, t: int, i: int) -> int | None:
        return self.S.get((t, i))

    def _constraints(self) -> None:
        g, T, inf = self.g, self.T, highspy.kHighsInf
        users: dict[int, list[int]] = {}
        for i, k in g.edges:
            users.setdefault(i, []).append(k)
        for t in range(T):
            for i, j in g.edges:  # (1b)
                if j <= t:
                    terms = {self.R[t, j]: 1.0, self.R[t, i]: -1.0}
                    if (s := self._s(t, i)) is not None:
                        terms[s] = -1.0
                    self._row(-inf, 0.0, terms)
            for i in range(t + 1):  # (1c)
                if t + 1 < T:
                    terms = {self.S[t + 1, i]: 1.0, self.R[t, i]: -1.0}
                    if (s := self._s(t, i)) is not None:
                        terms[s] = -1.0
                    self._row(-inf, 0.0, terms)
            terms = {self.U[t, 0]: 1.0, self.R[t, 0]: -g.mem[0]}  # (2)
            for i in range(t):
                terms[self.S[t, i]] = -g.mem[i]
            self._row(0.0, 0.0, terms)
            for k in range(t):  # (3, 4)
                terms = {self.U[t, k + 1]: 1.0, self.U[t, k]: -1.0, self.R[t, k + 1]: -g.mem[k + 1]}
                for e, (i, kk) in enumerate(g.edges):
                    if kk == k:
                        terms[self.F[t, e]] = g.mem[i]
                self._row(0.0, 0.0, terms)
            for e, (i, k) in enumerate(g.edges):  # (5)-(7): FREE through the hazards
                if k > t:
                    continue
                later = [j for j in users[i] if k < j <= t]
                haz = {self.R[t, k]: -1.0}
                const = 1.0
                if t + 1 < T:
                    haz[self.S[t + 1, i]] = 1.0
                for j in later:
                    haz[self.R[t, j]] = haz.get(self.R[t, j], 0.0) + 1.0
                kappa = const + (1 if t + 1 < T else 0) + len(later)
                # 1 - FREE <= const + haz  ->  FREE + haz >= 1 - const
                self._row(1.0 - const, inf, {self.F[t, e]: 1.0, **haz})
                # kappa (1 - FREE) >= const + haz  ->  -kappa FREE - haz >= const - kappa
                self._row(const - kappa, inf, {self.F[t, e]: -kappa, **{v: -c for v, c in haz.items()}})

    def start(self, R: np.ndarray, S: np.ndarray) -> np.ndarray | None:
        """A full assignment (FREE and U simulated from R and S), or None where it breaks the budget."""
        g, T = self.g, self.T
        x = np.zeros(len(self.obj))
        users: dict[int, list[int]] = {}
        for i, k in g.edges:
            users.setdefault(i, []).append(k)
        for (t, i), v in self.R.items():
            x[v] = R[t, i]
        for (t, i), v in self.S.items():
            x[v] = S[t, i]
        for t in range(T):
            u = R[t, 0] * g.mem[0] + sum(S[t, i] * g.mem[i] for i in range(t))
            x[self.U[t, 0]] = u
            for k in range(t + 1):
                if k > 0:
                    u += R[t, k] * g.mem[k]
                    x[self.U[t, k]] = u
                if u > self.ub[self.U[t, k]] + 1e-6:
                    return None
                for e, (i, kk) in enumerate(g.edges):
                    if kk != k:
                        continue
                    keep = t + 1 < T and S[t + 1, i]
                    later = any(R[t, j] for j in users[i] if k < j <= t)
                    free = 1.0 if R[t, k] and not keep and not later else 0.0
                    x[self.F[t, e]] = free
                    u -= free * g.mem[i]
        return x

    def solve(self, time_limit_s: float, start: np.ndarray | None = None) -> tuple[highspy.Highs, str]:
        h = _highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", max(float(time_limit_s), 0.05))
        h.setOptionValue("mip_rel_gap", 1e-3)
        h.setOptionValue("threads", 1)
        n = len(self.obj)
        h.addVars(n, np.array(self.lb), np.array(self.ub))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(self.obj))
        if self.n_int:
            idx = np.array(list(self.R.values()) + list(self.S.values()) + list(self.F.values()), dtype=np.int32)
            h.changeColsIntegrality(len(idx), idx, np.full(len(idx), highspy.HighsVarType.kInteger))
        starts: list[int] = []
        index: list[int] = []
        value: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        for lo_, hi_, idx_, val_ in self.rows:
            starts.append(len(index))
            index.extend(idx_)
            value.extend(val_)
            lo.append(lo_)
            hi.append(hi_)
        h.addRows(
            len(self.rows), np.array(lo), np.array(hi), len(index),
            np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32), np.array(value),
        )  # fmt: skip
        if start is not None:
            h.setSolution(len(start), np.arange(len(start), dtype=np.int32), start)
        h.run()
        status = h.getModelStatus()
        has = h.getInfo().primal_solution_status == 2
        if status == highspy.HighsModelStatus.kOptimal:
            return h, "optimal"
        if status == highspy.HighsModelStatus.kInfeasible:
            return h, "infeasible"
        return h, "time-limit" if has else "no-solution"

    def matrix(self, values: list[float], var: dict[tuple[int, int], int]) -> np.ndarray:
        out = np.zeros((self.T, self.T))
        for (t, i), v in var.items():
            out[t, i] = values[v]
        return out


def _recomputed(g: CheckmateGraph, R: np.ndarray) -> frozenset[tuple[int, int]]:
    """(u, w) for every unit u computed more than once: w is the unit of the first later stage that
    computes u again (that stage's node is w's forward or backward; the loss node counts as the last unit).
    PyTorch drops u's output only if w's checkpoint does not keep it: the checkpoint must reach from u to w."""
    n = g.n_units
    out = set()
    for u in range(n):
        again = [t for t in range(u + 1, g.size) if R[t, u] > 0.5]
        if again:
            t = again[0]
            out.add((u, t if t < n else n - 1 if t == n else 2 * n - t))
    return frozenset(out)


def _r_given_s(g: CheckmateGraph, S: np.ndarray) -> np.ndarray:
    """Checkmate's second phase: the cheapest R for a fixed S (restore (1c), then (1b) in reverse order)."""
    T = g.size
    R = np.eye(T, dtype=np.int8)
    Sb = S.astype(np.int8)
    R[:-1] |= (Sb[1:] - Sb[:-1] > 0).astype(np.int8)
    preds: list[list[int]] = [[] for _ in range(T)]
    for i, k in g.edges:
        preds[k].append(i)
    for t in range(T):
        for v in range(t, -1, -1):
            if R[t, v]:
                for u in preds[v]:
                    if not (R[t, u] or Sb[t, u]):
                        R[t, u] = 1
    return R


def solve_milp(g: CheckmateGraph, budget_mb: float, time_limit_s: float, warm_start: bool = True) -> Solution:
    """The MILP under ``time_limit_s``; ``warm_start``: seeded with the cheapest LP rounding that fits the MILP's
    own memory model (found within a tenth of the time limit), so a time limit still leaves a schedule."""
    t0 = time.perf_counter()
    model = _Model(g, budget_mb, integral=True)
    start = None
    if warm_start:
        lp = solve_lp_rounding(g, budget_mb, time_limit_s / 10, rs=True)
        for R, S in lp.rs:
            if (start := model.start(R, S)) is not None:
                break
    h, status = model.solve(time_limit_s - (time.perf_counter() - t0), start)
    if status in ("infeasible", "no-solution"):
        return Solution(frozenset(), float("inf"), status, None, time.perf_counter() - t0)
    values = list(h.getSolution().col_value)
    R = np.rint(model.matrix(values, model.R))
    info = h.getInfo()
    gap = float(info.mip_gap) if np.isfinite(info.mip_gap) else None
    cost = float((R * np.array(g.cost)[None, :]).sum())
    return Solution(_recomputed(g, R), cost, status, gap, time.perf_counter() - t0)


def solve_lp_rounding(
    g: CheckmateGraph,
    budget_mb: float,
    time_limit_s: float,
    thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    rs: bool = False,
    feasible_only: bool = False,
) -> Solution:
    """``feasible_only``: keep only the roundings whose memory (in the MILP's model) fits ``budget_mb``, as
    Checkmate does; otherwise all of them, cheapest first (the caller judges their memory)."""
    t0 = time.perf_counter()
    model = _Model(g, 0.9 * budget_mb, integral=False)
    h, status = model.solve(time_limit_s - (time.perf_counter() - t0))
    if status != "optimal":
        return Solution(frozenset(), float("inf"), status, None, time.perf_counter() - t0)
    values = list(h.getSolution().col_value)
    bound = float(h.getInfo().objective_function_value)
    S = model.matrix(values, model.S)
    found: dict[frozenset[tuple[int, int]], tuple[float, np.ndarray, np.ndarray]] = {}
    check = _Model(g, budget_mb, integral=True) if feasible_only else None
    for th in thresholds:
        Sr = (th <= S).astype(np.int8)
        R = _r_given_s(g, Sr)
        if check is not None and check.start(R, Sr) is None:
            continue
        rec = _recomputed(g, R)
        cost = float((R * np.array(g.cost)[None, :]).sum())
        if rec not in found or cost < found[rec][0]:
            found[rec] = (cost, R, Sr)
    if not found:
        return Solution(frozenset(), float("inf"), "no-solution", None, time.perf_counter() - t0)
    ordered = sorted(found, key=lambda r: found[r][0])
    best = ordered[0]
    cost = found[best][0]
    gap = max((cost - bound) / cost, 0.0) if cost > 0 else 0.0
    pairs = tuple((found[r][1], found[r][2]) for r in ordered) if rs else ()
    return Solution(best, cost, status, gap, time.perf_counter() - t0, tuple(ordered), pairs)
