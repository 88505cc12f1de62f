"""rnnkit::min_scan, the fused engine of the minimal GRU and LSTM (rnnkit.layers._min): its kernels
are C++ and C (csrc/cpu/min_scan_kernel.cpp, rnn_kernels_impl.h); here are its Python parts, as
for rnnkit::fused_rnn: the fake kernels that tracing (torch.compile, torch.export) runs (in
rnnkit.engines._fused_op, the module the library names for them), the autograd formula (the backward operator, or with create_graph=True the reference step loop
differentiated by autograd, so that gradients of gradients exist), and a vmap rule.

    min_scan(pre (T, B, G*H), h0 (B, H) or None, lengths (B,) int64 or None, kind, candidate)
        -> h (T, B, H), zeros past each length
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.engines import _library


def available() -> bool:
    """Whether rnnkit's library, which defines min_scan, is loaded in this process."""
    return _library.unavailable() is None


def min_scan(pre: Tensor, h0: Tensor | None, lengths: Tensor | None, kind: str, candidate: str) -> Tensor:
    """The fused scan (module docstring). Raises RuntimeError saying why where the library is not built."""
    reason = _library.unavailable()
    if reason is not None:
        raise RuntimeError(f"engine='fused' needs rnnkit's operator library: {reason}")
    return torch.ops.rnnkit.min_scan(pre, h0, lengths, kind, candidate)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    pre, h0, lengths, kind, candidate = inputs
    ctx.save_for_backward(pre, h0, lengths, output)
    ctx.kind, ctx.candidate = kind, candidate


def _backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
    pre, h0, lengths, out = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
        from rnnkit.layers._min import run_reference

        wrt = [t for t in (pre, h0) if t is not None and t.requires_grad]
        again = run_reference(pre, h0, lengths, ctx.kind, ctx.candidate)  # on the saved tensors, with their graph
        found = iter(torch.autograd.grad(again, wrt, d_out, create_graph=True, allow_unused=True) if wrt else ())
        d_pre = next(found) if pre.requires_grad else None
        d_h0 = next(found) if h0 is not None and h0.requires_grad else None
        return d_pre, d_h0, None, None, None
    d_pre, d_h0 = torch.ops.rnnkit.min_scan_backward(d_out.contiguous(), pre, h0, out, lengths, ctx.kind,
                                                     ctx.candidate)
    return d_pre, (d_h0 if h0 is not None else None), None, None, None


def _register() -> None:
    """The Python parts of rnnkit::min_scan, once the library has defined it."""
    from rnnkit.engines._fused_op import _vmap_by_slices

    ops = torch.ops.rnnkit
    torch.library.register_autograd("rnnkit::min_scan", _backward, setup_context=_setup_context)
    torch.library.register_vmap("rnnkit::min_scan", _vmap_by_slices(lambda *a: (ops.min_scan(*a),)))
    torch.library.register_vmap("rnnkit::min_scan_backward", _vmap_by_slices(ops.min_scan_backward))


_library.on_load(_register)
