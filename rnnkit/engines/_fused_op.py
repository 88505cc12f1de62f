"""The fused engine's operators from Python: rnnkit::fused_rnn (one layer and direction over the
whole sequence), rnnkit::fused_stack (every layer and direction of a stack, one kernel call a
pass), and their backward passes, defined in C++ (rnnkit/csrc: schemas, CPU kernels with their
planning, autograd kernels; built and loaded by rnnkit.engines._library).

Eager code, torch.compile, torch.export, jit.trace, torch.func and AOTInductor all call the same
operators. What must be Python is registered here once the library is loaded (_register):
- the fake kernels, which give the outputs' shapes from the inputs' (also symbolic ones, for
  dynamic T and B), for tracing;
- vmap rules (torch.func.vmap, jacrev, batched gradients): the operator once per slice;
- rnnkit::fused_rnn_grad_by_reference and rnnkit::fused_stack_grad_by_reference, which the
  autograd kernels call when a graph of the gradient is asked for (create_graph=True: gradient
  penalties, Hessian-vector products): the reference equations recomputed from the saved inputs
  and differentiated by autograd, so that gradients of gradients are exact too. The hand-written
  backward pass is not itself differentiable; the recompute costs one reference forward and
  backward pass, on that call only.

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
from rnnkit.cells._min import MIN_KINDS
from rnnkit.engines import _library
from rnnkit.engines._base import LayerConfig, Noise, reverse_padded
from rnnkit.engines._reference import ReferenceEngine, scan_loop, time_loop

SPECS = {spec.mode: spec for spec in (RNN_TANH, RNN_RELU, LSTM_SPEC, GRU_SPEC)}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
DTYPES = (torch.float32, torch.float64)
STACK_CELL_ARGS = 7
"""Tensors per cell (layer * D + direction) of a stack's flat inputs: h0, c0, w_ih, b_ih, w_hh,
b_hh, w_hr (None where absent)."""


def flags_of(w_hr: Tensor | None, ln_hh: Tensor | None, ln_cw: Tensor | None) -> int:
    """The kernels' HAS_PROJ | HAS_LN_H | HAS_LN_C: which optional arrays a layer has."""
    return (w_hr is not None) | (ln_hh is not None) << 1 | (ln_cw is not None) << 2


def forward_layout_size(mode: str, save: bool, steps: Any, batch: Any, hidden: Any, size: Any, flags: int) -> Any:
    """The forward workspace's size in elements, as rnnkit_forward_layout computes it, in plain
    arithmetic that also runs on symbolic sizes (the operator's fake kernel, under
    torch.compile and torch.export); opcheck in tests/test_toolchain.py holds the two equal."""
    kept, lstm = (steps if save else 1), mode == "LSTM"
    units = 4 if mode in ("LSTM", "GRU") else 1  # saved activations per unit
    gates = GATES[mode] * hidden
    sizes = [(kept + 1) * batch * size, (kept + 1) * batch * hidden if lstm else 0, kept * batch * units * hidden,
             kept * batch * hidden if lstm else 0, kept * batch * hidden if flags & 1 else 0,
             kept * batch * gates if flags & 2 else 0, kept * batch if flags & 2 else 0,
             kept * batch * hidden if flags & 4 else 0, kept * batch if flags & 4 else 0]
    return sum((n + 15) // 16 * 16 for n in sizes)


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


def _fused_stack_fake(x: Tensor, lengths: Tensor | None, weights: list[Tensor], present: list[bool], mode: str,
                      layers: int, directions: int) -> tuple[Any, ...]:
    flat = _unpresent(present, weights)
    steps, batch, inputs = x.shape
    gates, size = flat[4].shape
    hidden, wide, cells = gates // GATES[mode], directions * size, layers * directions
    if x.dtype == torch.bfloat16:  # bfloat16 training (cpu/bf16_train_kernel.cpp): every layer's output kept
        saved = steps * batch * hidden * (5 if mode in ("LSTM", "GRU") else 1)
        return (x.new_empty(steps, batch, wide), x.new_empty(cells, batch, size),
                x.new_empty(cells, batch, hidden) if mode == "LSTM" else x.new_empty(0),
                x.new_empty(layers, steps, batch, wide), x.new_empty(0),
                [x.new_empty(saved, dtype=torch.float32) for _ in range(cells)])
    work = forward_layout_size(mode, True, steps, batch, hidden, size, flags_of(flat[6], None, None))
    return (x.new_empty(steps, batch, wide), x.new_empty(cells, batch, size),
            x.new_empty(cells, batch, hidden) if mode == "LSTM" else x.new_empty(0),
            x.new_empty(layers - 1, steps, batch, wide) if layers > 1 else x.new_empty(0),
            x.new_empty(steps * batch * (inputs + (layers - 1) * wide)) if directions == 2 else x.new_empty(0),
            [x.new_empty(work) for _ in range(cells)])


def _fused_stack_backward_fake(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, x: Tensor,
                               lengths: Tensor | None, weights: list[Tensor], present: list[bool], inner: Tensor,
                               revs: Tensor, works: list[Tensor], mode: str, layers: int, directions: int,
                               needs: list[bool]) -> list[Tensor]:
    return [t.new_empty(t.shape) if need else x.new_empty(0) for t, need in zip([x, *weights], needs)]


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


def _fused_rnn_grad_by_reference(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None,
                                 *args: Any) -> list[Tensor]:
    """rnnkit::fused_rnn_grad_by_reference(d_out, d_hn, d_cn, *fused_rnn's 15 tensors, mode, needs):
    the gradients of fused_rnn's 11 differentiable inputs as a graph (empty (0,) where needs says
    no): the reference equations (the cells' from_gates) run again from the saved inputs, and
    autograd differentiates them with create_graph=True."""
    *inputs, mode, needs = args
    out, final = reference_equations(inputs, mode, time_loop)
    grads = _autograd_grads((out, *final), (d_out, d_hn, d_cn), inputs, needs, create_graph=True)
    return [inputs[0].new_empty(0) if g is None else g for g in grads]


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


def _cell_inputs(x: Tensor, lengths: Tensor | None, cell: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """rnnkit::fused_rnn's 15 tensor arguments for one cell of a stack (no layer norm, no noise)."""
    h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr = cell
    return (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, None, None, None, lengths, None, None, None)


def _stack(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
           flat: Sequence[Tensor | None], run: Callable[..., tuple[Tensor, ...]]) -> tuple[Tensor, list[Tensor]]:
    """Every layer and direction of a stack, each cell's call run(its 15 inputs) -> (out, h_n,
    c_n): the output (T, B, D*R) and each cell's h_n and c_n in turn."""
    finals: list[Tensor] = []
    layer_input = x
    for layer in range(layers):
        outs = []
        for direction in range(directions):
            index = layer * directions + direction
            seen = reverse_padded(layer_input, lengths) if direction == 1 else layer_input
            cell = flat[STACK_CELL_ARGS * index : STACK_CELL_ARGS * (index + 1)]
            out, h_n, c_n = run(*_cell_inputs(seen, lengths, cell))
            outs.append(reverse_padded(out, lengths) if direction == 1 else out)
            finals += [h_n, c_n]
        layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=2)  # (T, B, D*R)
    return layer_input, finals


def _per_cell(d_hn: Tensor | None, d_cn: Tensor | None, cells: int, mode: str) -> list[Tensor | None]:
    """The gradients of a stack's final state parts, (L*D, B, S) each or None, as each cell's
    h_n and c_n gradients in turn (the order _stack_backward_by_reference takes)."""
    lstm = mode == "LSTM"
    return [d for k in range(cells)
            for d in (None if d_hn is None else d_hn[k], None if d_cn is None or not lstm else d_cn[k])]


def _fused_stack_grad_by_reference(d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, x: Tensor,
                                   lengths: Tensor | None, weights: list[Tensor], present: list[bool], mode: str,
                                   layers: int, directions: int, needs: list[bool]) -> list[Tensor]:
    """rnnkit::fused_stack_grad_by_reference: the gradients of rnnkit::fused_stack's x and weights
    (needs: which, x first; empty (0,) where not needed) as a graph, by autograd over the whole
    stack's reference equations run again from the saved inputs (create_graph=True)."""
    flat = _unpresent(present, weights)
    cells = layers * directions

    def cell(*inputs: Tensor | None) -> tuple[Tensor, ...]:
        out, final = reference_equations(inputs, mode, time_loop)
        return out, final[0], final[1] if len(final) > 1 else out.new_empty(0)

    out, finals = _stack(mode, layers, directions, x, lengths, flat, cell)
    d_finals = _per_cell(d_hn, d_cn, cells, mode)
    needs_flat = [bool(n) for n in _unpresent(present, needs[1:])]
    grads = _autograd_grads((out, *finals), (d_out, *d_finals), (x, *flat), (needs[0], *needs_flat),
                            create_graph=True)
    kept = [grads[0], *[g for g, p in zip(grads[1:], present) if p]]
    return [x.new_empty(0) if g is None else g for g in kept]


def run_stack(mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
              flat: Sequence[Tensor | None]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A stack in one operator, rnnkit::fused_stack (one kernel call a pass; no layer norm, noise
    or dropout between layers): x (T, B, I), lengths (B,) in [1, T] or None, flat:
    STACK_CELL_ARGS tensors per cell. Returns out (T, B, D*R) and the final state's parts,
    (L*D, B, S) each."""
    weights, present = _present(flat)
    out, h_n, c_n, *_ = torch.ops.rnnkit.fused_stack.default(x, lengths, weights, present, mode, layers, directions)
    return out, (h_n, c_n) if mode == "LSTM" else (h_n,)


def _present(flat: Sequence[Tensor | None]) -> tuple[list[Tensor], list[bool]]:
    """A stack's flat inputs as rnnkit::fused_stack takes them: the tensors present, and which
    entries are (an operator's list of tensors holds no None that autograd could see through)."""
    return [t for t in flat if t is not None], [t is not None for t in flat]


def _unpresent(present: Sequence[bool], tensors: Sequence[Any]) -> list[Any]:
    """The flat entries again from _present's two lists (None where absent)."""
    it = iter(tensors)
    return [next(it) if p else None for p in present]


def unwatched(tensors: Sequence[Any]) -> bool:
    """Whether nothing but eager autograd sees a call on tensors: no torch.compile, torch.export
    or jit.trace tracing it, no torch.func transform, no dispatch or torch-function mode (make_fx,
    FakeTensorMode, FlopCounterMode, ...), and plain tensors only (no subclass such as a fake,
    functional or distributed tensor, no wrapper without storage such as a batched one). Then
    the tensors' values may be read in Python (a traced call has none, only their shapes)."""
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


def _vmap_by_slices(op: Callable[..., Any]) -> Callable[..., Any]:
    """A vmap rule that runs op once per slice of the mapped dimension and stacks the results
    (torch.func.vmap, jacrev, autograd.grad(is_grads_batched=True)); a list of tensors (a
    stack's weights) is sliced tensor by tensor."""

    def pick(arg: Any, dim: Any, index: int) -> Any:
        if isinstance(arg, (list, tuple)) and isinstance(dim, (list, tuple)):
            return [pick(a, d, index) for a, d in zip(arg, dim)]
        return arg if dim is None else arg.select(dim, index)

    def rule(info: Any, in_dims: tuple[Any, ...], *args: Any) -> tuple[Any, Any]:
        results = [op(*[pick(a, d, i) for a, d in zip(args, in_dims)]) for i in range(info.batch_size)]
        stacked = [torch.stack(parts) for parts in zip(*results)]
        if isinstance(results[0], list):  # an operator returning Tensor[]
            return stacked, [0] * len(stacked)
        return tuple(stacked), (0,) * len(stacked)

    return rule


def _min_scan_fake(pre: Tensor, h0: Tensor | None, lengths: Tensor | None, kind: str, candidate: str) -> Tensor:
    return pre.new_empty(pre.shape[0], pre.shape[1], pre.shape[2] // MIN_KINDS[kind])


def _min_scan_backward_fake(d_out: Tensor, pre: Tensor, h0: Tensor | None, out: Tensor, lengths: Tensor | None,
                            kind: str, candidate: str) -> tuple[Tensor, Tensor]:
    return torch.empty_like(pre), pre.new_empty(pre.shape[1], pre.shape[2] // MIN_KINDS[kind])


def _register() -> None:
    """The Python parts of the operators, once the library has defined them (rnnkit::min_scan's
    autograd and vmap rules: rnnkit.engines._min_op)."""
    ops = torch.ops.rnnkit
    torch.library.register_fake("rnnkit::min_scan", _min_scan_fake)
    torch.library.register_fake("rnnkit::min_scan_backward", _min_scan_backward_fake)
    torch.library.register_fake("rnnkit::fused_rnn", _fused_rnn_fake)
    torch.library.register_fake("rnnkit::fused_rnn_backward", _fused_rnn_backward_fake)
    torch.library.register_fake("rnnkit::fused_stack", _fused_stack_fake)
    torch.library.register_fake("rnnkit::fused_stack_backward", _fused_stack_backward_fake)
    for name in ("fused_rnn", "fused_rnn_backward", "fused_stack_backward"):
        torch.library.register_vmap(f"rnnkit::{name}", _vmap_by_slices(getattr(ops, name)))
    _LIBRARY.impl("fused_rnn_grad_by_reference", _fused_rnn_grad_by_reference, "CompositeImplicitAutograd")
    _LIBRARY.impl("fused_stack_grad_by_reference", _fused_stack_grad_by_reference, "CompositeImplicitAutograd")


_LIBRARY = torch.library.Library("rnnkit", "IMPL")
_library.on_load(_register)
_library.load_if_built()  # a saved program with the operators then loads after `import rnnkit`


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
        return _library.unavailable()

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
        out, h_n, c_n, _ = torch.ops.rnnkit.fused_rnn.default(*args)
        return out, ((h_n, c_n) if lstm else (h_n,))

from rnnkit.engines import _min_op  # noqa: E402,F401  (rnnkit::min_scan's Python parts, which the library's python module names)
