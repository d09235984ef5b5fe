"""Checkmate's rematerialization MILP (Jain et al., MLSys 2020) over the unit graph, solved with HiGHS.

The graph (:func:`checkmate_graph`) has a forward node per unit, a loss node and a backward node per unit, in
topological order (forward units, loss, backward units in reverse). Edges: a unit's forward reads its inputs'
forwards; a backward reads its unit's forward, its inputs' forwards and the backwards of its consumers. A
forward node's memory is what its unit allocates that the step keeps (saved for backward, or read by another
unit); a backward node's is the gradients of its unit's inputs. Costs are the profiled milliseconds.

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

    @property
    def size(self) -> int:
        return len(self.cost)


@dataclass(frozen=True)
class Solution:
    recomputed: frozenset[int]  # unit indices
    cost: float  # Σ R·cost over the whole schedule (ms)
    status: str  # "optimal", "time-limit", "infeasible", "no-solution"
    gap: float | None  # relative MIP gap, or (rounded − LP bound) / rounded for the rounding
    solve_s: float
    schedules: tuple[frozenset[int], ...] = ()  # LP rounding: every threshold's schedule, cheapest first


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
    for u in units:
        deps = [d for d in graph.deps[u] if d in pos]
        for d in deps:
            edges.add((fwd[d], fwd[u]))
            edges.add((fwd[d], bwd[u]))
            edges.add((bwd[u], bwd[d]))
        edges.add((fwd[u], bwd[u]))
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
    return CheckmateGraph(n, tuple(cost), tuple(mem), tuple(sorted(edges)))


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
        self.U = {(t, k): self._var(0.0, 0.0, max(budget_mb, 0.0)) for t in range(T) for k in range(t + 1)}
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

    def solve(self, time_limit_s: float) -> tuple[highspy.Highs, str]:
        h = highspy.Highs()
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
        starts, index, value, lo, hi = [], [], [], [], []
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


def _recomputed(g: CheckmateGraph, R: np.ndarray) -> frozenset[int]:
    return frozenset(u for u in range(g.n_units) if R[:, u].sum() > 1.5)


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


def solve_milp(g: CheckmateGraph, budget_mb: float, time_limit_s: float) -> Solution:
    t0 = time.perf_counter()
    model = _Model(g, budget_mb, integral=True)
    h, status = model.solve(time_limit_s - (time.perf_counter() - t0))
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
) -> Solution:
    t0 = time.perf_counter()
    model = _Model(g, 0.9 * budget_mb, integral=False)
    h, status = model.solve(time_limit_s - (time.perf_counter() - t0))
    if status != "optimal":
        return Solution(frozenset(), float("inf"), status, None, time.perf_counter() - t0)
    values = list(h.getSolution().col_value)
    bound = float(h.getInfo().objective_function_value)
    S = model.matrix(values, model.S)
    found: dict[frozenset[int], float] = {}
    for th in thresholds:
        R = _r_given_s(g, th <= S)
        rec = _recomputed(g, R)
        cost = float((R * np.array(g.cost)[None, :]).sum())
        found[rec] = min(cost, found.get(rec, float("inf")))
    ordered = sorted(found, key=lambda r: found[r])
    best = ordered[0]
    gap = (found[best] - bound) / found[best] if found[best] > 0 else 0.0
    return Solution(best, found[best], status, max(gap, 0.0), time.perf_counter() - t0, tuple(ordered))
