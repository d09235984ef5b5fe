"""The HTML report: constraints, a Pareto scatter plot, the candidate table and the near-misses.
Plots are inline SVG (matplotlib), so the page renders offline."""

from chipfit.report.html import render_report

__all__ = ["render_report"]
