"""Spend and quotas in dollars, with ``explore --budget``'s accounting (``chipfit.explore.budget``): a measurement
costs its device time (the worker's wall time) × the $/hour of the catalogue target it ran on. The local pool
is priced as the catalogue target this machine matches (``--local-target NAME`` overrides); a farm target at its
own catalogue price. A stored measurement that is reused costs nothing; predictions cost nothing.

A job's cost bound is its ``spec.time_budget`` at the price of the machines it runs on (each farm target measures
in parallel, so their prices add up). A job is refused at submission (402) when the team's remaining quota, less
the bounds still held by its queued and running jobs, cannot pay that bound; with a quota set, a job without a
time budget has no bound and is refused with 422.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from chipfit.errors import SpecError
from chipfit.explore.budget import parse_budget
from chipfit.server.errors import Invalid, PaymentRequired

__all__ = ["Pricing", "check_quota", "job_bound_usd", "parse_quota", "price_of"]


@dataclass(frozen=True)
class Pricing:
    """Where a job's measurements run and their $/hour: the local pool's target, or the farm's targets."""

    targets: tuple[str, ...]
    usd_per_hour: float  # all of them together (farm targets measure in parallel)
    basis: str  # how the price was chosen, for the job's record


def parse_quota(text: str | float | None) -> float | None:
    """``50usd``, ``$50`` or a number of dollars; ``none`` / ``unlimited`` for no quota."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("none", "unlimited", "")):
        return None
    if isinstance(text, int | float):
        value = float(text)
    else:
        try:
            budget = parse_budget(text if not text.strip().replace(".", "", 1).isdigit() else f"{text}usd")
        except SpecError:
            budget = None
        if budget is None or budget.unit != "usd":
            raise SpecError(f"--quota must be an amount of dollars (50usd, $50) or 'none'; got {text!r}.")
        value = budget.amount
    if value < 0:
        raise SpecError(f"--quota must not be negative; got {text!r}.")
    return value


@functools.lru_cache(maxsize=8)
def price_of(name: str | None) -> tuple[str, float, str]:
    """``(target, $/hour, basis)`` of the catalogue target ``name``, or of the one this machine matches."""
    from chipfit.hardware.catalog import get_target

    if name is not None:
        t = get_target(name)
        return t.name, t.usd_per_hour, f"{t.name} ${t.usd_per_hour:g}/h (--local-target)"
    from chipfit.hardware.local import match_local

    match, info = match_local()
    if match is None:
        raise SpecError(
            f"This machine matches no catalogue target ({info['how']}): start the server with "
            "--local-target NAME (see `chipfit targets`) to price its measurements."
        )
    return match.name, match.usd_per_hour, f"{match.name} ${match.usd_per_hour:g}/h ({info['how']})"


def farm_pricing(targets: Sequence[str]) -> Pricing:
    from chipfit.hardware.catalog import get_target

    found = [get_target(t) for t in targets]
    total = sum(t.usd_per_hour for t in found)
    basis = " + ".join(f"{t.name} ${t.usd_per_hour:g}/h" for t in found)
    return Pricing(tuple(t.name for t in found), total, basis)


def job_bound_usd(time_budget_s: float | None, pricing: Pricing) -> float | None:
    return None if time_budget_s is None else time_budget_s / 3600.0 * pricing.usd_per_hour


def check_quota(quota_usd: float | None, spent_usd: float, held_usd: float, bound_usd: float | None) -> None:
    """Refuse a job the team cannot pay for (402), or one without a bound under a quota (422)."""
    if quota_usd is None:
        return
    if bound_usd is None:
        raise Invalid(
            f'This team has a quota (${quota_usd:.4g}): a job needs spec.time_budget (e.g. "5m"), which bounds '
            "what it can cost. Add a time_budget to the job's spec."
        )
    left = quota_usd - spent_usd - held_usd
    if bound_usd > left + 1e-12:
        held = f", ${held_usd:.4g} of it held by queued and running jobs" if held_usd > 0 else ""
        raise PaymentRequired(
            f"The quota cannot pay for this job: ${max(0.0, quota_usd - spent_usd):.4g} left of ${quota_usd:.4g}"
            f"{held}; the job may cost up to ${bound_usd:.4g} (its time_budget at the machines' price). Lower "
            "spec.time_budget, wait for running jobs to finish, or ask an administrator to raise the quota."
        )
