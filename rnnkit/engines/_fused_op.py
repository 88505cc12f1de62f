"""The fused engine as PyTorch operators: ``rnnkit::fused_rnn`` (one layer and direction over
the whole sequence) and ``rnnkit::fused_rnn_backward`` (its hand-derived backward pass); and
``rnnkit::fused_stack`` with ``rnnkit::fused_stack_backward`` (every layer and direction of a
stack, for a compiled training step: one operator each way instead of one per cell).

Registered with torch.library, so that torch.compile, torch.export, torch.jit.trace and the
ONNX exporter see one opaque operator per layer and direction, never a call into the kernels
that they cannot trace. Each operator has:
- its CPU kernel (rnnkit.engines._fused, which calls the C kernels);
- a fake kernel, which gives the outputs' shapes from the inputs' (also symbolic ones, for
  dynamic T and B), for tracing;
- a vmap rule (torch.func.vmap, jacrev, batched gradients): the operator once per slice;
and rnnkit::fused_rnn has its autograd formula: rnnkit::fused_rnn_backward, or, when a graph of
the gradient is asked for (create_graph=True: gradient penalties, Hessian-vector products), the
reference equations recomputed from the saved inputs and differentiated by autograd, so that
gradients of gradients are exact too. The hand-written backward pass is not itself
differentiable; the recompute costs one reference forward and backward pass, on that call only.

In plain eager mode, when no such tool is watching (unwatched), the layers call the same
kernels and formula through a plain autograd.Function instead (for a layer in training, one for
the whole stack: _EagerFusedStackKernels, one kernel call a pass): the dispatcher's Python round
trips cost more than the kernels at small sizes.

The operators run on CPU (float32, float64) only; on other devices layers use torch's kernels
or the reference engine (rnnkit.engines.auto_order), and calling the operators there raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State, input_side
from rnnkit.cells import GRU_SPEC, LSTM_SPEC, RNN_RELU, RNN_TANH
from rnnkit.engines import _compiled
from rnnkit.engines._base import LayerConfig, Noise, reverse_padded
from rnnkit.engines._fused import (DTYPES, GATES, STACK_CELL_ARGS, Needs, cells_backward, flags_of, forward_layout_size,
                                   run_backward, run_forward, run_stack_backward, run_stack_backward_any, run_stack_forward,
                                   run_stack_forward_any, stack_plan)
from rnnkit.engines._reference import ReferenceEngine, scan_loop, time_loop

SPECS = {spec.mode: spec for spec in (RNN_TANH, RNN_RELU, LSTM_SPEC, GRU_SPEC)}


@torch.library.custom_op("rnnkit::fused_rnn", mutates_args=(), device_types="cpu")
def fused_rnn(
    x: Tensor,
    w_ih: Tensor | None,
    b_ih: Tensor | None,
    h0: Tensor | None,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    ln_hh: Tensor | None,
    ln_cw: Tensor | None,
    ln_cb: Tensor | None,
    lengths: Tensor | None,
    h_mask: Tensor | None,
    keep_h: Tensor | None,
    keep_c: Tensor | None,
    mode: str,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction of the cell family mode ('RNN_TANH', 'RNN_RELU', 'LSTM', 'GRU').

    x: the input (T, B, I) with w_ih (G*H, I) and b_ih (G*H,), projected in the kernel; or, with
        w_ih None, the input side of every step's gates (T, B, G*H) (layer_norm computes it).
    h0 (B, R), c0 (B, H): the initial state, None for zeros. w_hh (G*H, R), b_hh (G*H,), w_hr
        (R, H), ln_hh (G*H,), ln_cw (H,), ln_cb (H,): the cell's other weights (CellWeights).
    lengths (B,) int64 in [1, T]; h_mask (B, R); keep_h (T, B, R), keep_c (T, B, H) bool: see
        rnnkit.engines.Noise.
    save: keep what the backward pass reads (the workspace); False for a call not differentiated.

    Returns out (T, B, R), h_T (B, R), c_T (B, H) (empty (0,) unless LSTM) and the workspace
    (rnnkit_forward_layout's arrays in one tensor; empty (0,) unless save).
    """
    return run_forward(mode, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, lengths, h_mask,
                       keep_h, keep_c, save)


@fused_rnn.register_fake
def _fused_rnn_fake(x: Tensor, w_ih: Tensor | None, b_ih: Tensor | None, h0: Tensor | None, c0: Tensor | None,
                    w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None, ln_hh: Tensor | None,
                    ln_cw: Tensor | None, ln_cb: Tensor | None, lengths: Tensor | None, h_mask: Tensor | None,
                    keep_h: Tensor | None, keep_c: Tensor | None, mode: str, save: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    steps, batch = x.shape[0], x.shape[1]
    gates, size = w_hh.shape
    hidden = gates // GATES[mode]
    return (x.new_empty(steps, batch, size), x.new_empty(batch, size),
            x.new_empty(batch, hidden) if mode == "LSTM" else x.new_empty(0),
            x.new_empty(_workspace_size(mode, save, x, w_hh, w_hr, ln_hh, ln_cw)))


def _workspace_size(mode: str, save: bool, x: Tensor, w_hh: Tensor, w_hr: Tensor | None, ln_hh: Tensor | None,
                    ln_cw: Tensor | None) -> Any:
    """The elements of the workspace rnnkit::fused_rnn returns: all steps' arrays, or none."""
    if not save:
        return 0
    gates, size = w_hh.shape
    return forward_layout_size(mode, True, x.shape[0], x.shape[1], gates // GATES[mode], size,
                               flags_of(w_hr, ln_hh, ln_cw))


@torch.library.custom_op("rnnkit::fused_rnn_backward", mutates_args=(), device_types="cpu")
def fused_rnn_backward(
    d_out: Tensor | None,
    d_hn: Tensor | None,
    d_cn: Tensor | None,
    work: Tensor,
    x: Tensor,
    w_ih: Tensor | None,
    w_hh: Tensor,
    w_hr: Tensor | None,
    ln_hh: Tensor | None,
    ln_cw: Tensor | None,
    lengths: Tensor | None,
    h_mask: Tensor | None,
    keep_h: Tensor | None,
    keep_c: Tensor | None,
    mode: str,
    has_bias_ih: bool,
    has_bias: bool,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of rnnkit::fused_rnn's x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw
    and ln_cb (each of its input's shape; empty (0,) where needs says no or the input is absent)
    from those of out, h_T and c_T (None: zeros), its workspace and its inputs (the same ones)."""
    grads = run_backward(mode, d_out, d_hn, d_cn, work, x, w_ih, w_hh, w_hr, ln_hh, ln_cw, lengths, h_mask,
                         keep_h, keep_c, has_bias_ih, has_bias, Needs(*needs))
    return tuple(x.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@fused_rnn_backward.register_fake
def _fused_rnn_backward_fake(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, work: Tensor,
                             x: Tensor, w_ih: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
                             ln_hh: Tensor | None, ln_cw: Tensor | None, lengths: Tensor | None,
                             h_mask: Tensor | None, keep_h: Tensor | None, keep_c: Tensor | None, mode: str,
                             has_bias_ih: bool, has_bias: bool, needs: list[bool]) -> tuple[Tensor, ...]:
    batch = x.shape[1]
    gates, size = w_hh.shape
    hidden = gates // GATES[mode]
    lstm = mode == "LSTM"
    shapes = (x.shape, None if w_ih is None else w_ih.shape, (gates,) if w_ih is not None and has_bias_ih else None,
              (batch, size), (batch, hidden) if lstm else None, w_hh.shape, (gates,) if has_bias else None,
              None if w_hr is None else w_hr.shape, None if ln_hh is None else ln_hh.shape,
              None if ln_cw is None else ln_cw.shape, None if ln_cw is None else ln_cw.shape)
    return tuple(x.new_empty(shape if need and shape is not None else (0,)) for shape, need in zip(shapes, needs))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...], eager: bool = False) -> None:
    *tensors, mode, save = inputs
    ctx.mode, ctx.saved_work, ctx.eager = mode, save, eager
    ctx.save_for_backward(*tensors, output[3])
    ctx.set_materialize_grads(False)  # unused outputs' gradients come as None, not zeros


def _backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None,
              _d_work: Tensor | None) -> tuple[Tensor | None, ...]:
    *inputs, work = ctx.saved_tensors
    (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, lengths, h_mask, keep_h, keep_c) = inputs
    needs = Needs(*ctx.needs_input_grad[:11])
    if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable itself
        grads = _backward_by_reference(ctx.mode, inputs, (d_out, d_hn, d_cn), needs)
    else:
        if not ctx.saved_work:
            raise RuntimeError("rnnkit::fused_rnn was called with save=False, so it kept nothing for a backward pass")
        if not any(needs):
            return (None,) * 17
        args = (d_out, d_hn, d_cn, work, x, w_ih, w_hh, w_hr, ln_hh, ln_cw, lengths, h_mask, keep_h, keep_c)
        if unwatched(args[:3] if ctx.eager else args):  # (the saved tensors of an eager call are plain)
            grads = run_backward(ctx.mode, *args, b_ih is not None, b_hh is not None, needs)  # None: not needed
        else:
            computed = torch.ops.rnnkit.fused_rnn_backward(*args, ctx.mode, b_ih is not None, b_hh is not None,
                                                            list(needs))
            grads = tuple(g if need and t is not None else None for g, need, t in zip(computed, needs, inputs))
    return (*grads, None, None, None, None, None, None)  # lengths, masks, mode and save: no gradient


class _EagerFusedRNN(torch.autograd.Function):
    """rnnkit::fused_rnn in eager mode when nothing traces or transforms the call (unwatched):
    the same kernels, saved tensors and autograd formula, without the dispatcher's Python round
    trips, which cost more than the kernels at small sizes (about 110 us a call with autograd,
    against 18 us for the kernel at (T, B, I, H) = (20, 1, 1, 20))."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        *tensors, mode, save = args
        outputs = run_forward(mode, *tensors, save)  # type: ignore[call-arg]
        _setup_context(ctx, args, outputs, eager=True)
        ctx.mark_non_differentiable(outputs[3])
        return outputs

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _backward(ctx, *grads)


def _cell_inputs(x: Tensor, lengths: Tensor | None, cell: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """rnnkit::fused_rnn's 15 tensor arguments for one cell of a stack (no layer norm, no noise)."""
    h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr = cell
    return (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, None, None, None, lengths, None, None, None)


def _stack(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
           flat: Sequence[Tensor | None], run: Callable[..., tuple[Tensor, ...]]
           ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Every layer and direction of a stack, each cell's call run(its 15 inputs) -> (out, h_n,
    c_n, ...): the output (T, B, D*R), each cell's h_n and c_n, each call's extra outputs (the
    workspace) and the input each cell read (reversed within each length for direction 1)."""

    finals: list[Tensor] = []
    extras: list[Tensor] = []
    seens: list[Tensor] = []
    layer_input = x
    for layer in range(layers):
        outs = []
        for direction in range(directions):
            index = layer * directions + direction
            seen = reverse_padded(layer_input, lengths) if direction == 1 else layer_input
            cell = flat[STACK_CELL_ARGS * index : STACK_CELL_ARGS * (index + 1)]
            out, h_n, c_n, *rest = run(*_cell_inputs(seen, lengths, cell))
            outs.append(reverse_padded(out, lengths) if direction == 1 else out)
            finals += [h_n, c_n]
            extras += rest
            seens.append(seen)
        layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=2)
    return layer_input, finals, extras, seens


class _EagerFusedStack(torch.autograd.Function):
    """A whole stack (every layer and direction) in one autograd Function, in plain eager mode
    (unwatched), without layer norm, noise or dropout between layers: the fused kernels of each
    cell in turn, one autograd node instead of one per cell with the reversals and
    concatenations between them. At small sizes autograd's cost per node is most of the time.

    apply(mode, layers, directions, x (T, B, I), lengths, *flat) -> (out (T, B, D*R), h_n, c_n
    of each cell); flat holds STACK_CELL_ARGS tensors per cell. The backward pass runs the
    backward kernels from the top layer down, each direction's input gradient summed into the
    layer below's output gradient. A graph of the gradient (create_graph=True) is made as for
    one cell: the reference equations run again and autograd differentiates them."""

    @staticmethod
    def forward(ctx: Any, mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
                *flat: Tensor | None) -> tuple[Tensor, ...]:  # type: ignore[override]
        out, finals, works, seens = _stack(mode, layers, directions, x, lengths, flat,
                                           lambda *a: run_forward(mode, *a, True))  # type: ignore[call-arg]
        ctx.mode, ctx.layers, ctx.directions = mode, layers, directions
        ctx.save_for_backward(x, lengths, *flat, *works, *seens[1:])
        ctx.set_materialize_grads(False)
        if mode != "LSTM":
            ctx.mark_non_differentiable(*finals[1::2])  # c_n: empty
        return (out, *finals)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor | None, *d_finals: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]

        mode, layers, directions = ctx.mode, ctx.layers, ctx.directions
        cells = layers * directions
        saved = ctx.saved_tensors
        x, lengths = saved[0], saved[1]
        flat = saved[2 : 2 + STACK_CELL_ARGS * cells]
        works = saved[2 + STACK_CELL_ARGS * cells : 2 + STACK_CELL_ARGS * cells + cells]
        seens = (x, *saved[2 + STACK_CELL_ARGS * cells + cells :])
        needs_flat = ctx.needs_input_grad[5:]
        ctx.needs_x, ctx.needs_flat = ctx.needs_input_grad[3], needs_flat
        if torch.is_grad_enabled() or not unwatched([d_out, *d_finals]):
            # create_graph=True (the gradient as a graph), or batched gradients (is_grads_batched)
            d_x, by_reference = _stack_backward_by_reference(ctx, x, lengths, flat, d_out, d_finals)
            return (None, None, None, d_x, None, *by_reference)
        dx, grads = cells_backward(mode, layers, directions, lengths, flat, ctx.needs_input_grad[3], needs_flat, d_out,
                                   lambda k: (d_finals[2 * k], d_finals[2 * k + 1]), lambda k: seens[k],
                                   lambda k: works[k])
        return (None, None, None, dx, None, *grads)


def _per_cell(d_hn: Tensor | None, d_cn: Tensor | None, cells: int, mode: str) -> list[Tensor | None]:
    """The gradients of a stack's final state parts, (L*D, B, S) each or None, as each cell's
    h_n and c_n gradients in turn (the order _stack_backward_by_reference takes)."""
    lstm = mode == "LSTM"
    return [d for k in range(cells)
            for d in (None if d_hn is None else d_hn[k], None if d_cn is None or not lstm else d_cn[k])]


def _stack_backward_by_reference(ctx: Any, x: Tensor, lengths: Tensor | None, flat: Sequence[Tensor | None],
                                 d_out: Tensor | None, d_finals: Sequence[Tensor | None]
                                 ) -> tuple[Tensor | None, Sequence[Tensor | None]]:
    """A stack Function's gradients by autograd (the input's, and flat's): the reference
    equations of the whole stack run again from the saved inputs, and autograd differentiates
    them; as a graph when grad mode is on (create_graph=True). Batched output gradients
    (is_grads_batched) take this way too. d_finals: each cell's h_n and c_n gradients; ctx:
    mode, layers, directions, and needs_x and needs_flat (which gradients are wanted)."""
    graph = torch.is_grad_enabled()

    def cell(*inputs: Tensor | None) -> tuple[Tensor, ...]:
        out, final = reference_equations(inputs, ctx.mode, time_loop)
        return out, final[0], final[1] if len(final) > 1 else out.new_empty(0)

    with torch.enable_grad():
        if not graph:  # differentiate fresh leaves: nothing of the recomputation outlives the call
            x = x.detach().requires_grad_(ctx.needs_x)
            flat = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(flat, ctx.needs_flat)]
        out, finals, _, _ = _stack(ctx.mode, ctx.layers, ctx.directions, x, lengths, flat, cell)
    needs = (ctx.needs_x, *ctx.needs_flat)
    result = _autograd_grads((out, *finals), (d_out, *d_finals), (x, *flat), needs, create_graph=graph)
    return result[0], result[1:]


class _EagerFusedStackKernels(torch.autograd.Function):
    """A whole stack as _EagerFusedStack, with each pass one call of the kernels for all cells
    (rnn_stack_forward, rnn_stack_backward: the reversals and concatenations in C too), where
    the stack's plan allows (stack_plan: the weight gradients in the kernels, as at small and
    medium sizes, where the glue around the kernels costs most).

    apply(mode, layers, directions, x (T, B, I), lengths (B,) int64 or None, plan, *flat) ->
    (out (T, B, D*R), h_n (L*D, B, R), c_n (L*D, B, H); c_n empty unless LSTM)."""

    @staticmethod
    def forward(ctx: Any, mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None, plan: Any,
                *flat: Tensor | None) -> tuple[Tensor, ...]:  # type: ignore[override]
        x = x.contiguous()
        out, h_n, c_n, *saved = run_stack_forward(plan, mode, layers, directions, x, lengths, flat)
        ctx.mode, ctx.layers, ctx.directions, ctx.plan = mode, layers, directions, plan
        ctx.save_for_backward(x, lengths, *flat, *saved)
        ctx.set_materialize_grads(False)
        if mode != "LSTM":
            ctx.mark_non_differentiable(c_n)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None,  # type: ignore[override]
                 d_cn: Tensor | None) -> tuple[Tensor | None, ...]:
        x, lengths, *rest = ctx.saved_tensors
        cells = ctx.layers * ctx.directions
        flat, saved = rest[: STACK_CELL_ARGS * cells], rest[STACK_CELL_ARGS * cells :]
        ctx.needs_x, ctx.needs_flat = ctx.needs_input_grad[3], ctx.needs_input_grad[6:]
        if torch.is_grad_enabled() or not unwatched([d_out, d_hn, d_cn]):
            # create_graph=True (the gradient as a graph), or batched gradients (is_grads_batched)
            dx, grads = _stack_backward_by_reference(ctx, x, lengths, flat, d_out,
                                                     _per_cell(d_hn, d_cn, cells, ctx.mode))
        else:
            dx, grads = run_stack_backward(ctx.plan, ctx.mode, ctx.layers, ctx.directions, x, lengths, flat, saved,
                                           d_out, d_hn, d_cn, ctx.needs_x, ctx.needs_flat)
        return (None, None, None, dx, None, None, *grads)


def run_stack(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
              flat: Sequence[Tensor | None]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A stack in one autograd Function: _EagerFusedStackKernels where its plan allows, else
    _EagerFusedStack. x (T, B, I), lengths (B,) in [1, T] or None, flat: STACK_CELL_ARGS tensors
    per cell. Returns out (T, B, D*R) and the final state's parts, (L*D, B, S) each."""
    plan = _stack_plan_for(x, flat, mode, layers, directions)
    if plan.one_call:
        run_lengths = None if lengths is None else lengths.to(torch.int64).contiguous()
        out, h_n, c_n = _EagerFusedStackKernels.apply(mode, layers, directions, x, run_lengths, plan, *flat)
        return out, (h_n, c_n) if mode == "LSTM" else (h_n,)
    out, *finals = _EagerFusedStack.apply(mode, layers, directions, x, lengths, *flat)
    h_n = torch.stack(finals[0::2])
    return out, (h_n, torch.stack(finals[1::2])) if mode == "LSTM" else (h_n,)


def _present(flat: Sequence[Tensor | None]) -> tuple[list[Tensor], list[bool]]:
    """A stack's flat inputs as rnnkit::fused_stack takes them: the tensors present, and which
    entries are (an operator's list of tensors holds no None that autograd could see through)."""
    return [t for t in flat if t is not None], [t is not None for t in flat]


def _unpresent(present: Sequence[bool], tensors: Sequence[Any]) -> list[Any]:
    """The flat entries again from _present's two lists (None where absent)."""
    it = iter(tensors)
    return [next(it) if p else None for p in present]


def _stack_plan_for(x: Tensor, flat: Sequence[Tensor | None], mode: str, layers: int, directions: int) -> Any:
    """stack_plan for a stack's call on x (T, B, I) with flat's weights."""
    kernels = _compiled.load()
    assert not isinstance(kernels, str), kernels
    gates, size = flat[4].shape  # type: ignore[union-attr]
    steps, batch, inputs = x.shape
    return stack_plan(kernels, mode, x.dtype, layers, directions, steps, batch, inputs, gates, size,
                      flags_of(flat[6], None, None), torch.get_num_threads())


@torch.library.custom_op("rnnkit::fused_stack", mutates_args=(), device_types="cpu")
def fused_stack(x: Tensor, lengths: Tensor | None, weights: list[Tensor], present: list[bool], mode: str, layers: int,
                directions: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A whole stack (layers, directions) of the cell family mode, for training: x (T, B, I);
    lengths (B,) int64 in [1, T] or None; weights: the flat inputs present (present: which of
    STACK_CELL_ARGS entries per cell, h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr, are). No layer norm
    or noise. Returns out (T, B, D*R), h_n (L*D, B, R), c_n (L*D, B, H) (empty (0,) unless
    LSTM), and what its backward pass reads: the layers' inner outputs (L-1, T, B, D*R), the
    second direction's reversed inputs and the workspaces (each empty (0,) where there are none).
    One kernel call where the stack's plan allows, else the cells' kernels in turn."""
    flat = _unpresent(present, weights)
    x = x.contiguous()
    plan = _stack_plan_for(x, flat, mode, layers, directions)
    out, h_n, c_n, inner, revs, works = run_stack_forward_any(plan, mode, layers, directions, x, lengths, flat)
    return (out, h_n, c_n, x.new_empty(0) if inner is None else inner, x.new_empty(0) if revs is None else revs,
            works)


@fused_stack.register_fake
def _fused_stack_fake(x: Tensor, lengths: Tensor | None, weights: list[Tensor], present: list[bool], mode: str,
                      layers: int, directions: int) -> tuple[Tensor, ...]:
    flat = _unpresent(present, weights)
    steps, batch, inputs = x.shape
    gates, size = flat[4].shape
    hidden, wide, cells = gates // GATES[mode], directions * size, layers * directions
    works = cells * forward_layout_size(mode, True, steps, batch, hidden, size, flags_of(flat[6], None, None))
    return (x.new_empty(steps, batch, wide), x.new_empty(cells, batch, size),
            x.new_empty(cells, batch, hidden) if mode == "LSTM" else x.new_empty(0),
            x.new_empty(layers - 1, steps, batch, wide) if layers > 1 else x.new_empty(0),
            x.new_empty(steps * batch * (inputs + (layers - 1) * wide)) if directions == 2 else x.new_empty(0),
            x.new_empty(works))


@torch.library.custom_op("rnnkit::fused_stack_backward", mutates_args=(), device_types="cpu")
def fused_stack_backward(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, x: Tensor,
                         lengths: Tensor | None, weights: list[Tensor], present: list[bool], inner: Tensor,
                         revs: Tensor, works: Tensor, mode: str, layers: int, directions: int,
                         needs: list[bool]) -> list[Tensor]:
    """rnnkit::fused_stack's backward pass: from the gradients of out, h_n and c_n (None:
    zeros) and what it saved, the gradients of x and of each of weights (needs: which, x first);
    zeros for a needed one no gradient reaches, empty (0,) for one not needed."""
    flat = _unpresent(present, weights)
    x = x.contiguous()
    plan = _stack_plan_for(x, flat, mode, layers, directions)
    saved = (inner if layers > 1 else None, revs if directions == 2 else None, works)
    dx, grads = run_stack_backward_any(plan, mode, layers, directions, x, lengths, flat, saved, d_out, d_hn, d_cn,
                                       needs[0], _unpresent(present, needs[1:]))
    result = [dx, *[g for g, p in zip(grads, present) if p]]
    like = [x, *weights]
    return [g if g is not None else torch.zeros_like(t) if need else x.new_empty(0)
            for g, t, need in zip(result, like, needs)]


@fused_stack_backward.register_fake
def _fused_stack_backward_fake(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, x: Tensor,
                               lengths: Tensor | None, weights: list[Tensor], present: list[bool], inner: Tensor,
                               revs: Tensor, works: Tensor, mode: str, layers: int, directions: int,
                               needs: list[bool]) -> list[Tensor]:
    return [t.new_empty(t.shape) if need else x.new_empty(0) for t, need in zip([x, *weights], needs)]


def _fused_stack_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, lengths, weights, present, mode, layers, directions = inputs
    ctx.mode, ctx.layers, ctx.directions, ctx.present = mode, layers, directions, present
    ctx.save_for_backward(x, lengths, *weights, *output[3:])
    ctx.set_materialize_grads(False)


def _fused_stack_backward_formula(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None,
                                  *_: Tensor | None) -> tuple[Any, ...]:
    x, lengths, *rest = ctx.saved_tensors
    weights, (inner, revs, works) = rest[:-3], rest[-3:]
    needs_w = list(ctx.needs_input_grad[2])
    ctx.needs_x = ctx.needs_input_grad[0]
    ctx.needs_flat = [bool(n) for n in _unpresent(ctx.present, needs_w)]  # (None: absent, no need)
    if not ctx.needs_x and not any(needs_w):
        return None, None, [None] * len(weights), None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the gradient as a graph, by the reference equations
        flat = _unpresent(ctx.present, weights)
        dx, grads = _stack_backward_by_reference(ctx, x, lengths, flat, d_out,
                                                 _per_cell(d_hn, d_cn, ctx.layers * ctx.directions, ctx.mode))
        grads_w = [g for g, p in zip(grads, ctx.present) if p]
    else:
        result = torch.ops.rnnkit.fused_stack_backward(
            d_out, d_hn, d_cn if ctx.mode == "LSTM" else None, x, lengths, list(weights), ctx.present, inner, revs, works,
            ctx.mode, ctx.layers, ctx.directions, [ctx.needs_x, *needs_w])
        dx, grads_w = result[0], result[1:]
    return (dx if ctx.needs_x else None, None, [g if need else None for g, need in zip(grads_w, needs_w)],
            None, None, None, None)


fused_stack.register_autograd(_fused_stack_backward_formula, setup_context=_fused_stack_setup)


def run_stack_op(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
                 flat: Sequence[Tensor | None]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A stack through the operator rnnkit::fused_stack (for torch.compile of a training step):
    as run_stack, out (T, B, D*R) and the final state's parts (L*D, B, S)."""
    weights, present = _present(flat)
    run_lengths = None if lengths is None else lengths.to(torch.int64)
    out, h_n, c_n, *_ = torch.ops.rnnkit.fused_stack(x, run_lengths, weights, present, mode, layers, directions)
    return out, (h_n, c_n) if mode == "LSTM" else (h_n,)


def unwatched(tensors: Sequence[Any]) -> bool:
    """Whether nothing but eager autograd sees a call on tensors: no torch.compile, torch.export
    or jit.trace tracing it, no torch.func transform, no dispatch or torch-function mode (make_fx,
    FakeTensorMode, FlopCounterMode, ...), and plain tensors only (no subclass such as a fake,
    functional or distributed tensor, no wrapper without storage such as a batched one). Then
    the kernels may be called directly; otherwise the call goes through the operators, which
    every such tool sees."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    for t in tensors:
        kind = type(t)
        if kind is Tensor:
            if not _has_storage(t):  # a wrapper of the Tensor type: batched (autograd.grad(is_grads_batched))
                return False
        elif t is not None and kind not in _PLAIN:
            return False
    return True


_has_storage = torch._C._has_storage
_PLAIN = {torch.nn.Parameter, str, bool}
"""Besides tensors with storage: a parameter is a module's own, never a wrapper."""


def reference_equations(inputs: Sequence[Tensor | None], mode: str, loop: Callable[..., tuple[Tensor, State]]
                        ) -> tuple[Tensor, State]:
    """rnnkit::fused_rnn's function (inputs: its 15 tensor arguments), computed by the reference
    equations (the cells' from_gates) in loop: time_loop (a Python loop autograd differentiates)
    or scan_loop (one scan, for export). Returns out (T, B, R) and the final state."""
    (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, lengths, h_mask, keep_h, keep_c) = inputs
    assert w_hh is not None and x is not None
    spec = SPECS[mode]
    # weight_ih is not read: from_gates starts from the input side gi
    weights = CellWeights(w_hh if w_ih is None else w_ih, w_hh, b_ih, b_hh, w_hr, None, ln_hh, ln_cw, ln_cb)
    gi = x if w_ih is None else torch.nn.functional.linear(x, w_ih, b_ih)  # (T, B, G*H)
    batch, (gates, size) = x.shape[1], w_hh.shape
    state: State = (x.new_zeros(batch, size) if h0 is None else h0,)
    if mode == "LSTM":
        state += (x.new_zeros(batch, gates // 4) if c0 is None else c0,)
    keep = None if keep_h is None else (keep_h,) if keep_c is None else (keep_h, keep_c)
    return loop(lambda g, s: spec.from_gates(g, s, weights, h_mask), gi, state, lengths=lengths, keep=keep)


def _backward_by_reference(mode: str, inputs: Sequence[Tensor | None], d_outputs: Sequence[Tensor | None],
                           needs: Needs) -> tuple[Tensor | None, ...]:
    """The gradients of the needed inputs, as a graph: the reference equations (the cells'
    from_gates) run again from the saved inputs, and autograd differentiates them with
    create_graph=True."""
    out, final = reference_equations(inputs, mode, time_loop)
    return _autograd_grads((out, *final), d_outputs, inputs, needs, create_graph=True)


def _autograd_grads(outputs: Sequence[Tensor], d_outputs: Sequence[Tensor | None], inputs: Sequence[Tensor | None],
                    needs: Sequence[bool], *, create_graph: bool) -> tuple[Tensor | None, ...]:
    """The gradients of the inputs that needs names (one entry per need: None where not needed;
    zeros for a needed input the outputs do not depend on) from those of the outputs (None:
    zero), by autograd."""
    pairs = [(y, d) for y, d in zip(outputs, d_outputs) if d is not None]
    wanted = {i: t for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None}
    grads = torch.autograd.grad([y for y, _ in pairs], list(wanted.values()), [d for _, d in pairs],
                                create_graph=create_graph, allow_unused=True)
    result: list[Tensor | None] = [None] * len(needs)  # (inputs may run on past the needs)
    for (i, t), g in zip(wanted.items(), grads):
        result[i] = g if g is not None else torch.zeros_like(t)
    return tuple(result)


fused_rnn.register_autograd(_backward, setup_context=_setup_context)


def fused_rnn_decomposition(x: Tensor, w_ih: Tensor | None, b_ih: Tensor | None, h0: Tensor | None,
                             c0: Tensor | None, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None,
                             ln_hh: Tensor | None, ln_cw: Tensor | None, ln_cb: Tensor | None, lengths: Tensor | None,
                             h_mask: Tensor | None, keep_h: Tensor | None, keep_c: Tensor | None, mode: str,
                             save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """rnnkit::fused_rnn as the reference equations in one scan over time, which the ONNX exporter
    writes as an ONNX Scan: for a program exported with torch.export first (which holds the
    operator), ``program.run_decompositions(onnx_decompositions())`` before torch.onnx.export.
    (Layers exported by torch.onnx.export directly run the same scan.) The workspace, read only by
    a backward pass, which an exported inference graph has none of, comes back as zeros."""
    out, final = reference_equations((x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, lengths, h_mask,
                                      keep_h, keep_c), mode, scan_loop)
    work = x.new_zeros(_workspace_size(mode, save, x, w_hh, w_hr, ln_hh, ln_cw))
    return out, final[0], final[1] if mode == "LSTM" else x.new_empty(0), work


def onnx_decompositions() -> dict[Any, Callable[..., Any]]:
    """{rnnkit::fused_rnn: its decomposition}, for ExportedProgram.run_decompositions before ONNX.
    (Not in torch's global decomposition table: fake tensors with symbolic sizes would run it in
    place of the operator's fake kernel, and torch.export would trace the loop.)"""
    return {torch.ops.rnnkit.fused_rnn.default: fused_rnn_decomposition}


def _vmap_by_slices(op: Callable[..., tuple[Tensor, ...]]) -> Callable[..., Any]:
    """A vmap rule that runs op once per slice of the mapped dimension and stacks the results
    (torch.func.vmap, jacrev, autograd.grad(is_grads_batched=True))."""

    def rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        results = [op(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)])
                   for i in range(info.batch_size)]
        stacked = tuple(torch.stack(parts) for parts in zip(*results))
        return stacked, (0,) * len(stacked)

    return rule


torch.library.register_vmap("rnnkit::fused_rnn", _vmap_by_slices(torch.ops.rnnkit.fused_rnn))
torch.library.register_vmap("rnnkit::fused_rnn_backward", _vmap_by_slices(torch.ops.rnnkit.fused_rnn_backward))


def under_transform() -> bool:
    """Whether any torch.func transform (vmap, grad, jvp, ...) or forward-mode AD
    (torch.autograd.forward_ad) is running."""
    return torch.autograd.forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


def differentiated_by_transform() -> bool:
    """Whether a torch.func transform that differentiates (grad, vjp, jacrev, jvp, jacfwd) or
    forward-mode AD is running: the fused operator's autograd formula serves neither, so the
    layer hands such calls to the reference engine (the same function, differentiated by
    autograd). vmap alone keeps the operator (its vmap rule)."""
    if not under_transform():
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() != TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class FusedEngine:
    name = "fused"

    def unsupported(self, config: LayerConfig, x: Tensor) -> str | None:
        if x.device.type != "cpu":
            return f"it runs on CPU, and the input is on {x.device.type}"
        if x.dtype not in DTYPES:
            return f"it runs float32 and float64, and the input is {x.dtype}"
        return _compiled.unavailable()

    def run(
        self,
        spec: CellSpec,
        x: Tensor,
        state: State | None,
        weights: CellWeights,
        *,
        lengths: Tensor | None,
        noise: Noise,
    ) -> tuple[Tensor, State]:
        if not torch.jit.is_tracing() and x.shape[1] == 0:  # an empty batch: nothing to run, as torch.nn
            return ReferenceEngine().run(spec, x, state, weights, lengths=lengths, noise=noise)
        w = weights
        w_ih: Tensor | None
        b_ih: Tensor | None
        if w.ln_weight_ih is None:  # the kernel projects x itself
            xp, w_ih, b_ih = x, w.weight_ih, w.bias_ih
        else:  # the input side of all steps' gates, layer-normalised: (T, B, I) -> (T, B, G*H)
            xp, w_ih, b_ih = input_side(x, w), None, None
        lstm = spec.mode == "LSTM"
        keep_h, keep_c = (None, None) if noise.keep is None else (noise.keep[0], noise.keep[1] if lstm else None)
        h0, c0 = (None, None) if state is None else (state[0], state[1] if lstm else None)  # None: zeros
        save = (torch.is_grad_enabled() or torch.jit.is_tracing()) and any(
            t is not None and t.requires_grad for t in (xp, h0, c0, *weights))  # traced: one graph for both
        args = (xp, w_ih, b_ih, h0, c0, w.weight_hh, w.bias_hh, w.weight_hr, w.ln_weight_hh, w.ln_weight_c,
                w.ln_bias_c, lengths, noise.h_mask, keep_h, keep_c, spec.mode, save)
        if not unwatched(args):  # traced or transformed: the operator, which the tools see
            out, h_n, c_n, _ = torch.ops.rnnkit.fused_rnn(*args)
        elif save:
            out, h_n, c_n, _ = _EagerFusedRNN.apply(*args)
        else:
            out, h_n, c_n, _ = run_forward(spec.mode, *args[:-2], False)
        return out, ((h_n, c_n) if lstm else (h_n,))
