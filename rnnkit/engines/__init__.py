"""Engines: interchangeable ways of running a layer over a sequence.

``engine='reference'`` is the cell's step function in a Python loop (autograd does BPTT).
``engine='fused'`` runs the whole time loop in compiled kernels with a hand-derived backward
pass (CPU, float32 and float64).
``engine='auto'`` picks the fastest engine that supports the layer's configuration on the
input's device; an explicit engine that cannot run a configuration raises an error naming the
setting that blocked it.
"""

from __future__ import annotations

from torch import Tensor

from rnnkit.engines._base import Engine, LayerConfig, Noise, reverse_padded
from rnnkit.engines._fused import FusedEngine
from rnnkit.engines._reference import ReferenceEngine

ENGINES: dict[str, Engine] = {"reference": ReferenceEngine(), "fused": FusedEngine()}
"""Registered engines by name."""

AUTO_ORDER: tuple[str, ...] = ("fused", "reference")
"""Engines that engine='auto' tries, fastest first."""

ENGINE_NAMES = ("auto", *ENGINES)


def select_engine(name: str, config: LayerConfig, x: Tensor, *, owner: str) -> Engine:
    """The engine that runs config on x: the named one, or for 'auto' the first that can."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            engine = ENGINES[candidate]
            if engine.unsupported(config, x) is None:
                return engine
        raise RuntimeError(f"{owner}: no engine supports this configuration")  # reference runs all
    engine = ENGINES[name]
    reason = engine.unsupported(config, x)
    if reason is not None:
        raise ValueError(f"{owner}: engine={name!r} cannot run this layer: {reason}")
    return engine


__all__ = [
    "AUTO_ORDER",
    "ENGINES",
    "ENGINE_NAMES",
    "Engine",
    "FusedEngine",
    "LayerConfig",
    "Noise",
    "ReferenceEngine",
    "reverse_padded",
    "select_engine",
]
