"""Rendering: markdown reports and figures from typed results (never trains or loads models)."""

from interfuse.report.explain import (
    absent_warning,
    agreement_summary,
    comparison_table,
    render_explanation,
)
from interfuse.report.run import (
    estimates_table,
    mean_std_text,
    plot_history,
    plot_relevance,
    relevance_table,
    render_comparison,
    render_report,
    render_seed_summary,
)
from interfuse.report.tables import markdown_table

__all__ = [
    "absent_warning",
    "agreement_summary",
    "comparison_table",
    "estimates_table",
    "markdown_table",
    "mean_std_text",
    "plot_history",
    "plot_relevance",
    "relevance_table",
    "render_comparison",
    "render_explanation",
    "render_report",
    "render_seed_summary",
]
