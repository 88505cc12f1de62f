"""Diagnostics: see vanishing and exploding gradients through time, and measure memory.

gradient_flow, verdict, jacobian_norms, spectral_radii, hidden_stats: see rnnkit.diagnostics._flow.
The long-range memory tasks (adding problem, copy memory) are in rnnkit.data.memory_tasks.
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
    jacobian_norms,
    probing,
    spectral_radii,
    verdict,
)

__all__ = ["EXPLODING", "SATURATED", "VANISHING", "GradientFlow", "HiddenStats", "Verdict", "gradient_flow",
           "hidden_stats", "jacobian_norms", "probing", "spectral_radii", "verdict"]
