"""Budgeted exploration (``chipfit explore``): a YAML search space and a trainable, Optuna's ASHA pruner,
budgets in dollars, device-hours or wall time, trials in their own processes, a resumable study."""

from chipfit.explore.budget import Budget, CostMeter, parse_budget
from chipfit.explore.space import ExploreSpace, load_space
from chipfit.explore.study import ExploreResult, explore, preview
from chipfit.explore.trial import TrialContext

__all__ = [
    "Budget",
    "CostMeter",
    "ExploreResult",
    "ExploreSpace",
    "TrialContext",
    "explore",
    "load_space",
    "parse_budget",
    "preview",
]
