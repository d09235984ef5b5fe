"""Render the report from a FitResult with a Jinja2 template shipped in the package."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from chipfit.report.plots import batch_plot, pareto_plot
from chipfit.result import constraints_table

if TYPE_CHECKING:
    from chipfit.result import FitResult

__all__ = ["FAILURES", "render_report", "row_groups"]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"  # 55,827, not 5.583e+04
    return html.escape(str(v))


FAILURES = ("failed", "timeout", "oom")  # measured and broke: red, with the failure class and the reason


def row_groups(result: FitResult) -> dict[str, Any]:
    """The candidate table's rows (measured: ok or pruned), the failures, and the skipped candidates as
    (reason, count) pairs, most frequent first: a skipped candidate was never measured, so it is no row."""
    rows = [c for c in result.candidates if c.measurement.status not in ("skipped", *FAILURES)]
    failed = [c for c in result.candidates if c.measurement.status in FAILURES]
    skipped = Counter(
        c.measurement.error or "no reason given" for c in result.candidates if c.measurement.status == "skipped"
    )
    return {"rows": rows, "failed": failed, "skipped": skipped.most_common()}


def render_report(result: FitResult) -> str:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    from chipfit import __version__
    from chipfit.measure.stats import MIN_P99_SAMPLES
    from chipfit.search.select import quality_floor_text

    return env.get_template("template.html.j2").render(
        r=result,
        version=__version__,
        constraints=constraints_table(result),
        pareto_svg=pareto_plot(result),
        batch_svg=batch_plot(result),
        pareto_ids={p.candidate.id for p in result.pareto},
        min_p99_samples=MIN_P99_SAMPLES,
        quality_floor=quality_floor_text(result.spec),
        **row_groups(result),
        quality_name="accuracy" if result.reference and result.reference.metric("accuracy") is not None else "fidelity",
    )
