"""chipfit.remat's core: the plan's schedule trains with the plain step's gradients on chains, residual
CNNs, transformer blocks and a two-branch graph; budgets below the minimum and above the plain peak; the
solver's time limit; LP rounding against the MILP."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("highspy")

from torch import nn  # noqa: E402

from chipfit.errors import ChipfitError  # noqa: E402
from chipfit.remat import BudgetTooSmall, Plan, apply, plan  # noqa: E402
from chipfit.remat.graph import trace  # noqa: E402
from chipfit.remat.solver import checkmate_graph, solve_lp_rounding, solve_milp  # noqa: E402


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResCNN(nn.Module):
    def __init__(self, c: int = 8, n: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(n)])
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


class Transformer(nn.Module):
    def __init__(self, d: int = 32, n: int = 3, vocab: int = 50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            [nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True) for _ in range(n)]
        )
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for layer in self.layers:
            h = layer(h)
        return self.out(h)


class TwoBranch(nn.Module):
    """Two branches from one input, concatenated: not a chain, so checkpoint_sequential cannot take it."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.a = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))
        self.b = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU())
        self.merge, self.out = nn.Linear(2 * d, d), nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(torch.tanh(self.merge(torch.cat([self.a(h), self.b(h)], -1))))


def mlp(d: int = 64, n: int = 8) -> nn.Module:
    return nn.Sequential(*[layer for _ in range(n) for layer in (nn.Linear(d, d), nn.ReLU())])


CASES = {
    "mlp-chain": (lambda: mlp(), lambda: (torch.randn(256, 64),)),
    "residual-cnn": (lambda: ResCNN(), lambda: (torch.randn(4, 3, 32, 32),)),
    "transformer": (lambda: Transformer(), lambda: (torch.randint(0, 50, (4, 32)),)),
    "two-branch": (lambda: TwoBranch(), lambda: (torch.randn(256, 64),)),
}


def _grads(module: nn.Module, inputs: tuple[torch.Tensor, ...], params: list[nn.Parameter]) -> list[torch.Tensor]:
    for p in params:
        p.grad = None
    module(*inputs).float().mean().backward()
    return [p.grad.clone() for p in params]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_planned_schedule_trains_with_the_plain_steps_gradients(name: str) -> None:
    build, make_inputs = CASES[name]
    torch.manual_seed(0)
    module, inputs = build(), make_inputs()
    free = plan(module, inputs, 10_000)
    budget = free.min_budget_mb + 0.6 * (free.baseline_peak_mb - free.min_budget_mb)
    p = plan(module, inputs, budget, time_limit_s=3)
    assert p.recomputed and p.checkpoints, p
    assert not any("fixed schedule" in n for n in p.notes), p.notes  # the solver's own schedule
    assert p.peak_mb <= budget < p.baseline_peak_mb
    assert 0 < p.overhead < 1.0
    assert p.solver in ("milp", "lp-rounding", "segmented")
    params = list(module.parameters())
    plain = _grads(module, inputs, params)
    trained = apply(module, p)
    assert {id(q) for q in trained.parameters()} == {id(q) for q in params}  # shares the parameters
    assert list(trained.state_dict()) == list(module.state_dict())
    for a, b in zip(plain, _grads(trained, inputs, params), strict=True):
        torch.testing.assert_close(a, b)
    again = Plan.from_json(p.to_json())
    assert again == p


@pytest.mark.parametrize("solver", ["lp-rounding", "segmented"])
def test_lp_rounding_and_segmented_schedules_train_with_the_plain_steps_gradients(solver: str) -> None:
    torch.manual_seed(0)
    module, inputs = mlp(64, 8), (torch.randn(256, 64),)  # 16 units: two runs for the segmented solve
    free = plan(module, inputs, 10_000)
    budget = free.min_budget_mb + 0.6 * (free.baseline_peak_mb - free.min_budget_mb)
    p = plan(module, inputs, budget, solver=solver, time_limit_s=3)
    assert p.solver == solver and p.recomputed and p.peak_mb <= budget
    params = list(module.parameters())
    plain = _grads(module, inputs, params)
    for a, b in zip(plain, _grads(apply(module, p), inputs, params), strict=True):
        torch.testing.assert_close(a, b)


def test_two_branch_graph_is_planned_below_its_branches() -> None:
    module, inputs = TwoBranch(), (torch.randn(256, 64),)
    g = trace(module, inputs)
    assert {"a.0", "b.0", "merge"} <= {u.name for u in g.units}  # the branches are units, not one block
    merge = next(i for i, u in enumerate(g.units) if u.name == "merge")
    heads = {g.units[d].name for d in g.deps[merge]}
    assert heads == {"a.2", "b.3"}  # merge reads both branches (through the glue's cat)


def test_a_budget_below_the_minimum_names_the_minimum() -> None:
    module, inputs = mlp(), (torch.randn(256, 64),)
    free = plan(module, inputs, 10_000)
    with pytest.raises(BudgetTooSmall) as err:
        plan(module, inputs, free.min_budget_mb / 2)
    assert isinstance(err.value, ChipfitError)
    assert err.value.minimum_mb == pytest.approx(free.min_budget_mb)
    assert f"{free.min_budget_mb:.1f} MB" in str(err.value) and "at least" in str(err.value)


def test_a_budget_above_the_plain_peak_recomputes_nothing() -> None:
    module, inputs = ResCNN(), (torch.randn(4, 3, 32, 32),)
    p = plan(module, inputs, 10_000, optimizer="adam")
    assert p.solver == "none" and p.recomputed == () and p.overhead == 0.0
    assert p.peak_mb == p.baseline_peak_mb <= 10_000
    assert apply(module, p) is module
    sgd = plan(module, inputs, 10_000)
    params_mb = sum(q.numel() * 4 for q in module.parameters()) / 2**20
    assert p.peak_mb - sgd.peak_mb == pytest.approx(2 * params_mb, rel=0.01)  # Adam's two states


def test_the_solvers_time_limit_is_honoured() -> None:
    module, inputs = mlp(64, 12), (torch.randn(512, 64),)
    free = plan(module, inputs, 10_000)
    budget = free.min_budget_mb + 0.2 * (free.baseline_peak_mb - free.min_budget_mb)
    try:
        p = plan(module, inputs, budget, solver="milp", time_limit_s=0.2)
    except BudgetTooSmall as err:  # a clear error is an allowed answer too
        assert err.minimum_mb > 0
        return
    assert p.peak_mb <= budget
    assert p.solve_s < 0.2 + 10  # the limit plus model building; 10 s of slack for a loaded machine
    # a schedule that is the fixed fallback says so (solver names what was tried), else it is the solver's own
    assert p.fallback == any("least-memory fixed schedule" in n for n in p.notes)


def test_lp_rounding_costs_within_1_1x_of_the_milp() -> None:
    """Checkmate's metric (recompute cost of the schedule, both feasible in the MILP's memory model) on a
    residual CNN small enough for both; FLOPs as costs, so the ratio does not depend on the machine's load."""
    torch.manual_seed(0)
    g = trace(ResCNN(8, 6), (torch.randn(4, 3, 32, 32),), costs="flops")
    cg = checkmate_graph(g)
    stored = sum(cg.mem[: g.n])
    milp = solve_milp(cg, 0.6 * stored, 20)
    lp = solve_lp_rounding(cg, 0.6 * stored, 20, feasible_only=True)
    assert milp.status == "optimal" and lp.status == "optimal"
    ratio = lp.cost / milp.cost
    print(f"LP rounding / MILP recompute cost: {ratio:.4f}")
    assert 1.0 - 1e-6 <= ratio <= 1.1
    assert milp.recomputed  # the budget forces recomputation
