"""Diagnostics: see vanishing and exploding gradients through time, and measure memory.

gradient_flow, verdict, jacobian_norms, spectral_radii, hidden_stats, hidden_trace: see
rnnkit.diagnostics._flow;
diagnose_cells, diagnose_run, write_report: what `rnnkit diagnose` does. The long-range memory
tasks (adding problem, copy memory) are rnnkit.pipelines.memory.
"""

from rnnkit.diagnostics._flow import (
    EXPLODING,
    SATURATED,
    VANISHING,
    GradientFlow,
    HiddenStats,
    Verdict,
    gradient_flow,
    hidden_stats,
    hidden_trace,
    jacobian_norms,
    probing,
    spectral_radii,
    verdict,
)
from rnnkit.diagnostics._report import diagnose_cells, diagnose_run, write_report

__all__ = ["EXPLODING", "SATURATED", "VANISHING", "GradientFlow", "HiddenStats", "Verdict", "diagnose_cells",
           "diagnose_run", "gradient_flow",
           "hidden_stats", "hidden_trace", "jacobian_norms", "probing", "spectral_radii", "verdict", "write_report"]
