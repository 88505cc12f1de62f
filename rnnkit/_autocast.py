"""torch.autocast for rnnkit's layers and cells: the dtype torch.nn's module of the same kind
computes in under autocast, so that rnnkit's returns what torch.nn's returns.

torch decides it per operator: on CUDA its recurrent kernels (cuDNN's, and the fused cell
kernels) are on autocast's lower-precision list, so every recurrent module computes in the
autocast dtype (float16 or bfloat16). On CPU it depends on the kernel torch.nn's module reaches
(torch 2.13): RNN and RNNCell (matrix products) and LSTM (oneDNN's) compute in the autocast dtype,
but an LSTM given a PackedSequence without proj_size, GRU, LSTMCell and GRUCell stay in float32
(and an LSTM with proj_size returns its cell state c_n in float32).
rnnkit follows that table, casting the input, the state and the weights (differentiably: the
parameters stay float32 and get float32 gradients), and runs the call with autocast off in an
engine that takes the dtype (see rnnkit.engines: the fused kernels run float32 and float64, so
a lower precision runs in torch's kernels where they take the configuration, else the reference
engine; bfloat16 inference on a CPU with AVX-512 BF16 runs rnnkit::bf16_stack, rnnkit.layers._bf16).
"""

from __future__ import annotations

import torch

LOWER_ON_CPU = ("RNN", "RNNCell", "LSTM")
"""The recurrent modules whose torch.nn twin computes in the autocast dtype under CPU autocast
(LSTM: not given a PackedSequence without proj_size)."""


def _enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _lower(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def compute_dtype(module: str, device_type: str, *, packed: bool = False, proj: bool = False) -> torch.dtype | None:
    """The dtype a module of torch.nn's kind module ("LSTM", "GRUCell", ...) computes in on
    device_type under autocast; None when autocast is off there (or the device is neither CPU
    nor CUDA, whose policy rnnkit does not know)."""
    if device_type not in ("cpu", "cuda") or not _enabled(device_type):
        return None
    lower = _lower(device_type)
    if device_type == "cuda" or module in ("RNN", "RNNCell"):
        return lower
    if module == "LSTM":
        return lower if proj or not packed else torch.float32
    return torch.float32


def cell_state_dtype(module: str, device_type: str, *, proj: bool) -> torch.dtype | None:
    """The dtype of the final cell state c_n where torch.nn's differs from its output's: float32
    for an LSTM with proj_size on CPU (torch's portable kernel adds the lower-precision gates to
    a float32 c); None elsewhere."""
    return torch.float32 if module == "LSTM" and proj and device_type == "cpu" else None
