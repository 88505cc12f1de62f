"""Engines: interchangeable ways of running a layer over a sequence.

``engine='reference'`` is the cell's step function in a Python loop (autograd does BPTT).
``engine='fused'`` runs the whole time loop in compiled kernels with a hand-derived backward
pass (CPU, float32 and float64), as the PyTorch operators rnnkit::fused_rnn, rnnkit::fused_stack
and their backward passes, defined in C++ (rnnkit/csrc; their Python side in
rnnkit.engines._fused_op). ``engine='native'`` calls torch's own
kernels (oneDNN on CPU, cuDNN on CUDA) for what torch.nn supports.
``engine='auto'`` picks the fastest engine that supports the layer's configuration on the
input's device; an explicit engine that cannot run a configuration raises an error naming the
setting that blocked it.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rnnkit.engines._base import Engine, LayerConfig, Noise, Probe, reverse_padded
from rnnkit.engines._fused_op import FusedEngine, differentiated_by_transform, onnx_decompositions, under_transform
from rnnkit.engines._native import NativeEngine
from rnnkit.engines._reference import ReferenceEngine

log = logging.getLogger("rnnkit")

ENGINES: dict[str, Engine] = {"reference": ReferenceEngine(), "fused": FusedEngine(), "native": NativeEngine()}
"""Registered engines by name."""

ENGINE_NAMES = ("auto", *ENGINES)

FUSED_LSTM_MAX_WIDTH = 1024
NATIVE_LSTM_MIN_HIDDEN = 512
"""Without gradients, engine='auto' runs an LSTM on CPU in torch's oneDNN kernel when H is at
least NATIVE_LSTM_MIN_HIDDEN and B * H is more than FUSED_LSTM_MAX_WIDTH, where both run near the
machine's peak and oneDNN was a few percent ahead; trained LSTMs always run fused. The runs that
set it are in benchmarks/README.md, "The kernels' policy"."""


def auto_order(config: LayerConfig, x: Tensor, *, grad: bool = True) -> tuple[str, ...]:
    """The engines engine='auto' tries for config on x (T, B, I), fastest first; grad: whether
    the call will be differentiated.

    CPU: the fused engine, except for wide LSTMs (H >= NATIVE_LSTM_MIN_HIDDEN, B * H >
    FUSED_LSTM_MAX_WIDTH) run without gradients, where torch's oneDNN kernel is a little faster;
    under torch.export, never torch's kernels, which fix T in the exported graph on CPU. CUDA and
    other devices: torch's kernels (cuDNN), else the reference engine. The reference engine runs
    everything and comes last. The fused kernels run float32 and float64, so a lower precision
    (under autocast, rnnkit._autocast) runs in the first of the others that takes it.
    """
    if x.device.type != "cpu":
        return ("native", "reference")
    if torch.compiler.is_exporting():  # torch's CPU kernels unroll T into the graph when exported
        return ("fused", "reference")
    hidden = config.hidden_size
    if (not grad and config.spec.mode == "LSTM" and hidden >= NATIVE_LSTM_MIN_HIDDEN
            and x.shape[1] * hidden > FUSED_LSTM_MAX_WIDTH):
        return ("native", "fused", "reference")
    return ("fused", "native", "reference")


def select_engine(name: str, config: LayerConfig, x: Tensor, *, owner: str, grad: bool = True) -> Engine:
    """The engine that runs config on x (T, B, I): the named one, or for 'auto' the first that
    can (grad: whether the call will be differentiated)."""
    if name == "auto":
        for candidate in auto_order(config, x, grad=grad):
            engine = ENGINES[candidate]
            if engine.unsupported(config, x) is None:
                if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
                    log.debug("%s: engine='auto' runs %s on %s %s", owner, engine.name, x.device, x.dtype)
                return engine
        raise RuntimeError(f"{owner}: no engine supports this configuration")  # reference runs all
    engine = ENGINES[name]
    reason = engine.unsupported(config, x)
    if reason is not None:
        raise ValueError(f"{owner}: engine={name!r} cannot run this layer: {reason}")
    return engine


def for_tools(engine: Engine, config: LayerConfig, x: Tensor, *, lengths: bool) -> Engine:
    """The engine that runs config on x (T, B, I) in place of engine when a tool watches the
    call: engine itself, or the reference equations where the tool cannot take it (lengths:
    whether the call has variable lengths).

    - The ONNX exporter: always the reference equations (one scan over time: an ONNX Scan).
    - torch.compile and torch.export with torch's kernels (native): the reference equations for
      variable lengths, which torch's kernels take packed and dynamo refuses to trace the
      packing of; on CPU also for an LSTM (inductor mishandles oneDNN's LSTM kernel's outputs)
      and under torch.export (which fixes T in the graph of torch's CPU kernels, as auto_order
      avoids them there). On CUDA without lengths torch's kernels stay (cuDNN, as in torch.nn).
    - torch.func transforms and forward-mode AD: the fused operator keeps vmap (its vmap rule)
      and hands the differentiating ones to the reference engine; torch's kernels hand all of
      them over (no vmap rule; oneDNN's and cuDNN's have no forward-mode derivative)."""
    reference = ENGINES["reference"]
    if torch.compiler.is_compiling():
        if torch.onnx.is_in_onnx_export():
            return reference
        if engine.name == "native" and (lengths or (x.device.type == "cpu" and (
                config.spec.mode == "LSTM" or torch.compiler.is_exporting()))):
            return reference
    elif engine.name == "fused" and differentiated_by_transform():
        return reference
    elif engine.name == "native" and under_transform():
        return reference
    return engine


__all__ = [
    "FUSED_LSTM_MAX_WIDTH",
    "NATIVE_LSTM_MIN_HIDDEN",
    "ENGINES",
    "ENGINE_NAMES",
    "Engine",
    "FusedEngine",
    "NativeEngine",
    "LayerConfig",
    "Noise", "Probe",
    "ReferenceEngine",
    "auto_order",
    "onnx_decompositions",
    "reverse_padded",
    "select_engine",
    "for_tools",
]
