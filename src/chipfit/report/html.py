"""Render the report from a FitResult with a Jinja2 template shipped in the package."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from chipfit.report.plots import batch_plot, pareto_plot
from chipfit.result import constraints_table

if TYPE_CHECKING:
    from chipfit.result import FitResult

__all__ = ["render_report"]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


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
        quality_name="accuracy" if result.reference and result.reference.metric("accuracy") is not None else "fidelity",
    )
