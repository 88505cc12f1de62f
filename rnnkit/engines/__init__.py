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
least NATIVE_LSTM_MIN_HIDDEN and B * H is more than FUSED_LSTM_MAX_WIDTH: there both run their
products near the machine's peak, and oneDNN is a few percent ahead. Measured on 2-core
development CPUs, forward only, in full runs of `rnnkit bench`. With AVX-512 (three runs): fused
67.8-71.3 ms against native 65.6-68.4 ms at (T, B, I, H) = (100, 32, 512, 512); fused 34.9-36.3 ms
against native 35.8-37.5 ms at (100, 64, 256, 256). With AVX2 (two runs): fused 115.9 and 127.0 ms
against native 110.0 and 126.7 ms at (100, 32, 512, 512); fused 57.2 and 59.6 ms against native
52.3 and 61.1 ms at (100, 64, 256, 256), where a third, longer run had them level (68.8 against
68.5 ms). The fused engine was ahead at every smaller size (1.82x-1.97x torch.nn at (20, 1, 1, 20),
native 0.89x-0.93x). With gradients the fused engine is faster at every size (1.15x-1.97x
torch.nn at (100, 32, 512, 512), native 0.96x-0.99x), so it runs every LSTM that is trained.
Since the fused kernels share a step's gate math among threads too, the two are level at (100,
32, 512, 512) (AVX2, two full runs: fused 84.4 and 83.9 ms, native 84.9 and 84.7 ms), and the
fused engine was ahead at H = 768 to 2048 with B = 2 to 32 in 14 of 15 single paired runs
(1.05x-1.70x; 0.94x at (50, 16, 768, 768)), but behind at (100, 64, 1024, 1024) (0.86x). The rule
stands until a quieter machine settles where the line lies."""


def auto_order(config: LayerConfig, x: Tensor, *, grad: bool = True) -> tuple[str, ...]:
    """The engines engine='auto' tries for config on x (T, B, I), fastest first; grad: whether
    the call will be differentiated.

    CPU: the fused engine, except for wide LSTMs (H >= NATIVE_LSTM_MIN_HIDDEN, B * H >
    FUSED_LSTM_MAX_WIDTH) run without gradients, where torch's oneDNN kernel is a little faster;
    under torch.export, never torch's kernels, which fix T in the exported graph on CPU. CUDA and
    other devices: torch's kernels (cuDNN), else the reference engine. The reference engine runs
    everything and comes last.
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
