"""The fused engine's kernels (kernels/rnn_kernels_impl.h) as Python calls: forward and
backward of one layer and direction, with backpropagation through time derived by hand.
rnnkit.engines._fused_op makes them PyTorch operators; this module only calls the kernels.

In C, over weights packed once per call: the input projection x @ W_ih^T + b_ih (of all steps at
once before the loop when the batch runs as one slice; each slice its own at every step when the
batch runs in parallel slices); inside the time loop the recurrent product h_{t-1} @ W_hh^T, its
layer norm and the gate math; and after the backward loop, while their sums run over few rows,
the weight gradients. With layer_norm, the input side of the gates (LN(W_ih x) + b_ih) is
computed by torch before the loop and differentiated by autograd. A call that needs no gradient
keeps nothing for a backward pass."""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnnkit._checks import InputError
from rnnkit.engines import _compiled
from rnnkit.engines._base import reverse_padded

CELL_IDS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
DTYPES = {torch.float32: "_f32", torch.float64: "_f64"}
PARALLEL_MIN_ROWS = 8
"""Each thread's slice of the batch has at least this many sequences."""
PARALLEL_MIN_WORK = 1_000_000
"""Multiply-adds of the recurrent products (T * B * G*H * H) below which one thread runs all (and
of the input projection and the weight gradients, below which one thread runs each). Lowered
from 4M, which dated from slices run by a pool of Python threads: with the kernels' own threads,
training between 1M and 4M ran 1.07-1.18x faster in paired runs in one process on the 2-core
AVX2 machine (LSTM (T, B, I, H) = (10, 5, 50, 100), (20, 2, 64, 128), (10, 16, 32, 64); GRU (6,
5, 100, 200), (10, 4, 64, 128), (30, 16, 16, 40); RNN (20, 8, 64, 128), (20, 32, 32, 64); RNN
(6, 5, 100, 200): 1.00 and 1.08). Lower, at 500k or 200k, smaller sizes gained nothing
(0.97-1.02)."""
STEP_PARALLEL_MIN_WORK = 100_000
"""Multiply-adds of one step's recurrent product (B * G*H * R) from which a batch run as one
slice shares each step's products among threads, when the whole loop has PARALLEL_MIN_WORK
(about 1 us of work a step, as much as a step's synchronisation costs; but each thread then
streams only its share of W_hh, which stays in its core's cache: at B = 1, H = 256 this made an
LSTM's forward 1.6x faster than at 300k on the 2-core machine). Over few steps, waking the
threads costs more than they save."""
SHARED_STEP_MIN_BYTES = 2**22
SHARED_STEP_MAX_ROWS = 16
"""The forward pass leaves a batch that it would run in slices whole, and shares each step's
product among the threads instead, when W_hh takes at least SHARED_STEP_MIN_BYTES and the slices
would have at most SHARED_STEP_MAX_ROWS rows each. Slices each stream all of W_hh at every step,
so large weights over few rows are bound by the cache's bandwidth; shared, each thread streams its
share. LSTM forward, T = 100, on the 2-core AVX2 machine (paired runs in one process, sliced /
shared time): 1.27 at B = 32, I = H = 1024; 1.04 at B = 32 and 1.035 at B = 16, I = H = 512; but
0.95 at B = 64, H = 512 (32 rows a slice) and 0.92 at B = 16 and 32, H = 256 (W_hh of 1 MB).
The backward pass keeps its slices: training at B = 32, I = H = 512 took the same time with both
passes shared, and was 1.04x faster with the forward pass alone shared."""
PROJECTION_CHUNK = 2**21
"""Numbers of the input projection x W_ih^T + b_ih the forward kernel holds at once, for a batch
run as one slice: it projects the steps in chunks of about this size (each one product over all
its rows, which reads W_ih once), then runs the time loop over the chunk; memory stays bounded
at any sequence length. A batch run in slices projects each slice's rows at every step."""
KERNEL_WEIGHT_GRADS_MAX_WORK = 50_000_000
"""Multiply-adds of the weight gradients (T * B * G*H * (R + I)) up to which the backward kernel
computes them (summing over few rows, its products beat the BLAS's); above, torch does."""


def _slice_count(kernels: _compiled.Kernels, steps: int, batch: int, gates: int, hidden: int, threads: int) -> int:
    """How many slices of the batch the kernels run in parallel (one thread each).

    Sequences of a batch never meet, so each slice runs its whole time loop alone: no
    synchronisation per step. One slice for small work, or when the kernels lack OpenMP.
    """
    if not kernels.parallel or steps * batch * gates * hidden < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(threads, batch // PARALLEL_MIN_ROWS))


def _forward_slices(slices: int, batch: int, gates: int, size: int, itemsize: int) -> int:
    """The forward pass's slices: the backward's (slices), or one for large weights over slices of
    few rows (SHARED_STEP_MIN_BYTES); itemsize: the bytes of one number."""
    if slices > 1 and batch // slices <= SHARED_STEP_MAX_ROWS and gates * size * itemsize >= SHARED_STEP_MIN_BYTES:
        return 1
    return slices


def _product_threads(kernels: _compiled.Kernels, slices: int, steps: int, batch: int, gates: int, size: int,
                     threads: int) -> int:
    """How many threads share each step's products: for a batch too small to slice, all of them
    once the steps' work pays for it; else one (each slice has its thread)."""
    step = batch * gates * size
    if slices > 1 or not kernels.parallel or step < STEP_PARALLEL_MIN_WORK or steps * step < PARALLEL_MIN_WORK:
        return 1
    return threads


def _all_threads(kernels: _compiled.Kernels, work: int, threads: int) -> int:
    """Threads for a product of work multiply-adds done once a call (the input projection, the
    weight gradients): all of them from PARALLEL_MIN_WORK, else one."""
    return threads if kernels.parallel and work >= PARALLEL_MIN_WORK else 1


def _ptrs(*tensors: Tensor | None) -> list[int | None]:
    """The address of each tensor's data (None for None), in one call for a kernel's many
    arguments. The caller must hold the tensors until the kernel returns: pass named tensors,
    never a temporary made in the call's own arguments."""
    return [None if t is None else t.data_ptr() for t in tensors]


# Where the kernels lay out their workspaces (rnn_kernels.c: W_* and D_* in rnnkit_forward_layout
# and rnnkit_backward_layout), for the arrays read here
W_HS, W_HR, W_GHAT, W_PARTS = 0, 4, 5, 9
D_GI, D_GH, D_GH_RAW, D_PROJ, D_PARTS = 0, 1, 2, 3, 5
WORKSPACE_BLOCK_MAX = 2**24
"""Bytes up to which the backward kernel's workspace is one allocation. Above, each array is its
own: glibc serves allocations of up to 32 MB from memory it reuses, but maps fresh pages (faulted
in and zeroed at every call) for larger ones."""


class _Workspace:
    """The arrays a kernel lays out (its layout function: rnnkit_forward_layout with W_PARTS
    arrays, or rnnkit_backward_layout with D_PARTS), in one tensor (`block`, whose address the
    kernel takes) or, when large, in one tensor each (`parts`, whose addresses it takes). The
    forward pass's is always one block: it is an output of the operator rnnkit::fused_rnn, whose
    outputs have a fixed structure."""

    __slots__ = ("offsets", "block", "parts", "pointers")

    def __init__(self, like: Tensor, layout: tuple[int, tuple[int, ...]], *, block: Tensor | None = None) -> None:
        """layout: the layout function's (total size, offsets), from the call's _Plan; block: the
        whole workspace, already made (the forward pass's, handed to the backward pass)."""
        total, self.offsets = layout
        self.block = block
        self.parts: list[Tensor | None] | None = None
        self.pointers: Any = None  # parts' addresses, as the kernel takes them
        if block is not None:
            return
        if total * like.element_size() <= WORKSPACE_BLOCK_MAX:
            self.block = like.new_empty(total)
            return
        ends = sorted([o for o in self.offsets if o >= 0] + [total])
        self.parts = [None if o < 0 else like.new_empty(ends[ends.index(o) + 1] - o) for o in self.offsets]
        self.pointers = (ctypes.c_void_p * len(self.offsets))(*_ptrs(*self.parts))

    def view(self, index: int, shape: tuple[int, ...]) -> Tensor | None:
        """Array index of the layout, as shape; None when the layout has none."""
        if self.parts is not None:
            part = self.parts[index]
            return None if part is None else part[: math.prod(shape)].view(shape)
        assert self.block is not None
        offset = self.offsets[index]
        return None if offset < 0 else self.block[offset: offset + math.prod(shape)].view(shape)


def _layout(kernels: _compiled.Kernels, layout: str, args: tuple[int, ...], count: int) -> tuple[int, tuple[int, ...]]:
    """A layout function's total size and offsets (-1: array absent) for args."""
    offsets = (ctypes.c_long * count)()
    total = getattr(kernels.lib, layout)(*args, offsets)
    return total, tuple(offsets)


class _Plan(NamedTuple):
    """What the kernels' calls for one shape need beyond its tensors, worked out once per shape
    (_plan) rather than at every call: at small sizes the Python around the kernels costs more
    than the kernels."""

    forward: Any  # rnn_forward_slices and rnn_backward_slices for the dtype, as ctypes functions
    backward: Any
    slices: int  # the forward's: see _forward_slices
    threads: int  # the forward's: see _product_threads
    backward_slices: int  # see _slice_count
    backward_threads: int  # see _product_threads
    pthreads: int  # the input projection's threads
    chunk: int  # steps projected at once (PROJECTION_CHUNK)
    saved: tuple[int, tuple[int, ...]]  # the forward workspace's layout: all steps kept
    unsaved: tuple[int, tuple[int, ...]]  # and for a call that keeps nothing (one step)
    dlayout: tuple[int, tuple[int, ...]]  # the backward workspace's
    weight_threads: int  # threads of the weight gradients in the backward kernel; 0: by torch


@functools.lru_cache(maxsize=256)
def _plan(kernels: _compiled.Kernels, mode: str, dtype: torch.dtype, steps: int, batch: int, inputs: int,
          gates: int, size: int, flags: int, num_threads: int) -> _Plan:
    """The plan of a call: inputs is I when the kernel projects x, else 0; gates G*H; size R;
    flags the layer's flags (flags_of); num_threads torch.get_num_threads(), which the threads' counts
    follow (a key, so that a change of it makes a new plan). The plan changes no number: the
    kernels give the same bits on any thread count (tests/engines/test_threads.py)."""
    hidden = gates // GATES[mode]
    backward_slices = _slice_count(kernels, steps, batch, gates, hidden, num_threads)
    slices = _forward_slices(backward_slices, batch, gates, size, dtype.itemsize)
    cell = CELL_IDS[mode]
    weight_work = steps * batch * gates * (size + inputs)
    return _Plan(
        forward=getattr(kernels.lib, "rnn_forward_slices" + DTYPES[dtype]),
        backward=getattr(kernels.lib, "rnn_backward_slices" + DTYPES[dtype]),
        slices=slices,
        threads=_product_threads(kernels, slices, steps, batch, gates, size, num_threads),
        backward_slices=backward_slices,
        backward_threads=_product_threads(kernels, backward_slices, steps, batch, gates, size, num_threads),
        # for the projection of all steps at once (one slice), which reads W_ih once
        pthreads=_all_threads(kernels, steps * batch * gates * inputs, num_threads),
        chunk=min(steps, max(1, PROJECTION_CHUNK // (batch * gates))),
        saved=_layout(kernels, "rnnkit_forward_layout", (cell, 1, steps, batch, hidden, size, flags), W_PARTS),
        unsaved=_layout(kernels, "rnnkit_forward_layout", (cell, 0, steps, batch, hidden, size, flags), W_PARTS),
        dlayout=_layout(kernels, "rnnkit_backward_layout", (backward_slices, cell, steps, batch, hidden, size, flags),
                        D_PARTS),
        # The weight gradients in the kernel too, while it beats the BLAS at their shapes (few
        # rows to sum over); else by torch after it.
        weight_threads=_all_threads(kernels, weight_work, num_threads) if weight_work <= KERNEL_WEIGHT_GRADS_MAX_WORK
        else 0,
    )


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


def run_forward(
    mode: str,
    xp: Tensor,
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
    save: bool,
    work_block: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward kernel over xp: the gates' input side (T, B, G*H), or with w_ih the input x
    (T, B, I), projected in the kernel. Returns out (T, B, R), h_T (B, R), c_T (B, H) (LSTM; else
    empty) and the workspace the backward pass reads (see rnnkit::fused_rnn); save=False keeps
    nothing for a backward pass: the workspace then holds one step, which the kernel overwrites
    as it goes, and an empty one is returned. work_block: where the workspace goes (save=True;
    its size as rnnkit_forward_layout gives it), else a new tensor."""
    kernels = _compiled.load()
    assert not isinstance(kernels, str), kernels
    x = w_ih_c = b_ih_c = pre = None
    steps, batch = xp.shape[:2]
    gates, size = w_hh.shape  # G*H, R: proj_size with a projection, else hidden
    if w_ih is None:  # xp is the gates' input side (T, B, G*H), computed before the loop
        pre = xp.contiguous()
        inputs = 0
    else:  # xp is the input x (T, B, I), which the kernel projects: x W_ih^T + b_ih (T, B, G*H)
        x = xp.contiguous()
        inputs = x.shape[2]
        w_ih_c = w_ih.contiguous()
        b_ih_c = None if b_ih is None else b_ih.contiguous()
    lengths_c = checked_lengths(lengths, batch, steps)
    plan = _plan(kernels, mode, xp.dtype, steps, batch, inputs, gates, size, flags_of(w_hr, ln_hh, ln_cw),
                 torch.get_num_threads())
    if save:
        work = _Workspace(xp, plan.saved, block=xp.new_empty(plan.saved[0]) if work_block is None else work_block)
    else:
        work = _Workspace(xp, plan.unsaved)
    out = xp.new_empty(steps, batch, size)
    h_n = xp.new_empty(batch, size)
    c_n = xp.new_empty(batch, gates // 4) if mode == "LSTM" else xp.new_empty(0)
    h0_c, c0_c, w_hh_c = _contiguous(h0, c0, w_hh)
    masks = _masks(lengths_c, h_mask, keep_h, keep_c)
    status = plan.forward(
        plan.slices, plan.threads, plan.pthreads, plan.chunk, CELL_IDS[mode], save,
        steps, batch, gates // GATES[mode], size, inputs,
        *_ptrs(pre, x, w_ih_c, b_ih_c, w_hh_c, *_contiguous(b_hh, w_hr, ln_hh, ln_cw, ln_cb), *masks, h0_c, c0_c,
               out, h_n, c_n if mode == "LSTM" else None, work.block), work.pointers,
    )
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the forward kernel's scratch")
    assert work.block is not None
    return out, h_n, c_n, work.block if save else xp.new_empty(0)


def checked_lengths(lengths: Tensor | None, batch: int, steps: int) -> Tensor | None:
    """lengths (B,) as the kernels read them, int64 and contiguous; the kernels index by them, so
    a length outside [1, T] is refused here (a traced layer passes them unchecked)."""
    if lengths is None:
        return None
    lengths_c = lengths.to(torch.int64).contiguous()
    if lengths_c.shape != (batch,) or int(lengths_c.min()) < 1 or int(lengths_c.max()) > steps:
        raise InputError(f"rnnkit: expected {batch} lengths in [1, {steps}], got {lengths_c.tolist()}")
    return lengths_c


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    """Each tensor as the kernels read it, row-major without gaps (None stays None). The caller
    holds the results until the kernel returns (see _ptrs)."""
    return [None if t is None else t.contiguous() for t in tensors]


def _masks(lengths: Tensor | None, h_mask: Tensor | None, keep_h: Tensor | None,
           keep_c: Tensor | None) -> tuple[Tensor | None, ...]:
    """lengths, h_mask, keep_h and keep_c as the kernels read them: int64, contiguous, bytes."""
    return (None if lengths is None else lengths.to(torch.int64).contiguous(),
            None if h_mask is None else h_mask.contiguous(),
            None if keep_h is None else keep_h.contiguous().view(torch.uint8),
            None if keep_c is None else keep_c.contiguous().view(torch.uint8))


class Needs(NamedTuple):
    """Which gradients the backward pass computes, by rnnkit::fused_rnn's differentiable inputs."""

    x: bool
    w_ih: bool
    b_ih: bool
    h0: bool
    c0: bool
    w_hh: bool
    b_hh: bool
    w_hr: bool
    ln_hh: bool
    ln_cw: bool
    ln_cb: bool


def run_backward(
    mode: str,
    d_out: Tensor | None,
    d_hn: Tensor | None,
    d_cn: Tensor | None,
    work_block: Tensor,
    xp: Tensor,
    w_ih: Tensor | None,
    w_hh: Tensor,
    w_hr: Tensor | None,
    ln_hh: Tensor | None,
    ln_cw: Tensor | None,
    lengths: Tensor | None,
    h_mask: Tensor | None,
    keep_h: Tensor | None,
    keep_c: Tensor | None,
    has_bias_ih: bool,
    has_bias: bool,
    needs: Needs,
) -> tuple[Tensor | None, ...]:
    """The backward kernel: the gradients of run_forward's differentiable inputs (in Needs'
    order; None where not needed), from those of its outputs (None: zeros) and its workspace."""
    kernels = _compiled.load()
    assert not isinstance(kernels, str), kernels
    steps, batch = xp.shape[:2]
    gates, size = w_hh.shape  # G*H, R
    hidden = gates // GATES[mode]
    x_in = None if w_ih is None else xp.contiguous().view(steps * batch, -1)  # (T*B, I)
    w_hh = w_hh.contiguous()
    w_ih, w_hr, ln_hh, ln_cw = _contiguous(w_ih, w_hr, ln_hh, ln_cw)
    inputs = 0 if x_in is None else x_in.shape[1]
    plan = _plan(kernels, mode, xp.dtype, steps, batch, inputs, gates, size, flags_of(w_hr, ln_hh, ln_cw),
                 torch.get_num_threads())
    work = _Workspace(w_hh, plan.saved, block=work_block)
    masks = _masks(lengths, h_mask, keep_h, keep_c)
    like = w_hh
    d_out = like.new_zeros(steps, batch, size) if d_out is None else d_out.contiguous()
    dh = like.new_zeros(batch, size) if d_hn is None else d_hn.clone(memory_format=torch.contiguous_format)
    dc = None
    if mode == "LSTM":
        dc = like.new_zeros(batch, hidden) if d_cn is None else d_cn.clone(memory_format=torch.contiguous_format)
    dwork = _Workspace(like, plan.dlayout)
    in_kernel = plan.weight_threads > 0  # the weight gradients in the kernel, else by torch after it
    dx = dw_ih = db_ih = dw_hh = db_hh = dw_hr = dln_hh = None
    if in_kernel:
        if needs.x and x_in is not None:
            dx = like.new_empty(steps, batch, inputs)
        dw_ih = like.new_empty(gates, inputs) if x_in is not None and needs.w_ih else None
        db_ih = like.new_empty(gates) if x_in is not None and needs.b_ih and has_bias_ih else None
        dw_hh = like.new_empty(gates, size) if needs.w_hh else None
        db_hh = like.new_empty(gates) if has_bias and needs.b_hh else None
        dw_hr = like.new_empty(size, hidden) if w_hr is not None and needs.w_hr else None
        dln_hh = like.new_empty(gates) if ln_hh is not None and needs.ln_hh else None
    dln_cw = like.new_empty(hidden) if ln_cw is not None and needs.ln_cw else None
    dln_cb = like.new_empty(hidden) if ln_cw is not None and needs.ln_cb else None
    status = plan.backward(
        plan.backward_slices, plan.backward_threads, plan.weight_threads, CELL_IDS[mode], steps, batch, hidden,
        size, inputs,
        *_ptrs(w_hh, w_hr, ln_hh, ln_cw, *masks, work.block), work.pointers,
        *_ptrs(d_out, dh, dc, dwork.block), dwork.pointers,
        *_ptrs(x_in, w_ih, dx, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh, dln_cw, dln_cb),
    )
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the backward kernel's scratch")
    if x_in is None and needs.x:  # the gates' input side came in: its gradient is dgi
        dx = dwork.view(D_GI, (steps, batch, gates))
    if not in_kernel:
        dx_in, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh = _weight_grads_by_torch(
            mode, (steps, batch), w_hh, w_hr, ln_hh, x_in, w_ih, masks[1], work, dwork, needs, has_bias_ih, has_bias)
        if x_in is not None:
            dx = dx_in
    return (dx, dw_ih, db_ih, dh if needs.h0 else None, dc if needs.c0 else None,
            dw_hh, db_hh, dw_hr, dln_hh, dln_cw, dln_cb)


def _weight_grads_by_torch(
    mode: str, shape: tuple[int, int], w_hh: Tensor, w_hr: Tensor | None, ln_hh: Tensor | None,
    x_in: Tensor | None, w_ih: Tensor | None, h_mask: Tensor | None, work: _Workspace, dwork: _Workspace,
    needs: Needs, has_bias_ih: bool, has_bias: bool,
) -> tuple[Tensor | None, ...]:
    """dx (when the kernel projected x), dW_ih, db_ih, dW_hh, db_hh, dW_hr and dln_hh as torch
    products after the backward kernel, for sizes where they beat the kernel's own; shape: T, B."""
    steps, batch = shape
    gates, size = w_hh.shape
    hidden, rows = gates // GATES[mode], steps * batch
    dgi = dwork.view(D_GI, (rows, gates))
    assert dgi is not None
    dgh, dgh_raw = dwork.view(D_GH, (rows, gates)), dwork.view(D_GH_RAW, (rows, gates))
    dg_post = dgi if dgh is None else dgh  # the recurrent side's gradient after its layer norm (GRU: dgh)
    dg_rec = dg_post if dgh_raw is None else dgh_raw  # and before it
    dx = dw_ih = db_ih = dw_hh = db_hh = dw_hr = dln_hh = None
    if x_in is not None and w_ih is not None:  # the input projection's, when the kernel did it
        if needs.x:
            dx = (dgi @ w_ih).view(steps, batch, -1)  # (T, B, I)
        if needs.w_ih:
            dw_ih = dgi.t() @ x_in  # (G*H, I)
        if needs.b_ih and has_bias_ih:
            db_ih = dgi.sum(0)
    if needs.w_hh:
        hs = work.view(W_HS, (steps + 1, batch, size))
        assert hs is not None
        hs = hs[:steps]
        h_in = hs if h_mask is None else hs * h_mask  # (T, B, R): what met W_hh
        dw_hh = dg_rec.t() @ h_in.reshape(rows, size)  # (G*H, R)
    if has_bias and needs.b_hh:
        db_hh = dg_post.sum(0)
    if w_hr is not None and needs.w_hr:  # (P, H) = dproj (T*B, P)^T @ hr (T*B, H)
        dproj, hr = dwork.view(D_PROJ, (rows, size)), work.view(W_HR, (rows, hidden))
        assert dproj is not None and hr is not None
        dw_hr = dproj.t() @ hr
    if ln_hh is not None and needs.ln_hh:
        ghat = work.view(W_GHAT, (rows, gates))
        assert ghat is not None
        dln_hh = (dg_post * ghat).sum(0)
    return dx, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh


class _StackPlan(NamedTuple):
    """What the calls for a whole stack need beyond its tensors, for one shape: where each
    cell's forward workspace lies in the stack's, and, where one kernel call a pass serves the
    stack (one_call), each cell's _Plan as rnn_stack_forward and rnn_stack_backward take it."""

    one_call: bool  # the stack's kernels serve it: each cell's weight gradients in its kernel
    forward: Any  # rnn_stack_forward and rnn_stack_backward for the dtype, as ctypes functions
    backward: Any
    ints: Any  # the plan's ints (ctypes): STACK_HEAD, then STACK_CELL_INTS per cell
    work_at: tuple[int, ...]  # where each cell's forward workspace starts in the stack's
    work_at_c: Any  # the same, as ctypes longs
    works: int  # the forward workspaces' elements, all cells
    scratch: int  # the backward pass's scratch (rnn_stack_backward_scratch)
    cells: tuple[_Plan, ...]  # each cell's plan


@functools.lru_cache(maxsize=128)
def stack_plan(kernels: _compiled.Kernels, mode: str, dtype: torch.dtype, layers: int, directions: int, steps: int,
               batch: int, inputs: int, gates: int, size: int, flags: int, num_threads: int) -> _StackPlan:
    """The plan of a whole stack's calls (inputs: I of the first layer; gates G*H; size R; flags
    HAS_PROJ or 0). One kernel call a pass (one_call) serves it unless a cell's weight
    gradients are torch's, after its kernel (large sizes, where the call's glue is nothing beside
    the products anyway), or it has more layers than a bit mask holds."""
    ints = [CELL_IDS[mode], layers, directions, steps, batch, gates // GATES[mode], size, inputs, flags]
    at, total, cells = [], 0, []
    for layer in range(layers):
        plan = _plan(kernels, mode, dtype, steps, batch, inputs if layer == 0 else directions * size, gates, size,
                     flags, num_threads)
        for _ in range(directions):
            ints += [plan.slices, plan.threads, plan.pthreads, plan.chunk, plan.backward_slices,
                     plan.backward_threads, plan.weight_threads]
            at.append(total)
            total += plan.saved[0]  # (a multiple of 16: each cell's workspace starts on a 64-byte line)
            cells.append(plan)
    plan_ints = (ctypes.c_int * len(ints))(*ints)
    suffix = DTYPES[dtype]
    return _StackPlan(
        one_call=layers <= 30 and all(plan.weight_threads > 0 for plan in cells),
        forward=getattr(kernels.lib, "rnn_stack_forward" + suffix),
        backward=getattr(kernels.lib, "rnn_stack_backward" + suffix),
        ints=plan_ints,
        work_at=tuple(at),
        work_at_c=(ctypes.c_long * len(at))(*at),
        works=total,
        scratch=getattr(kernels.lib, "rnn_stack_backward_scratch" + suffix)(plan_ints),
        cells=tuple(cells),
    )


STACK_CELL_ARGS = 7
"""Tensors per cell (layer * D + direction) of a stack's flat inputs: h0, c0, w_ih, b_ih, w_hh,
b_hh, w_hr (None where absent)."""


def run_stack_forward(plan: _StackPlan, mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
                      flat: Sequence[Tensor | None]
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """Every layer and direction of a stack in one kernel call (rnn_stack_forward): x (T, B, I),
    lengths (B,) int64 in [1, T] or None, flat: STACK_CELL_ARGS tensors per cell. Returns out
    (T, B, D*R), h_n (L*D, B, R), c_n (L*D, B, H) (LSTM; else empty), and what the backward pass
    reads: inner (L-1, T, B, D*R) or None, revs or None, and the workspaces."""
    steps, batch, _ = x.shape
    size = flat[4].shape[1]  # type: ignore[union-attr]
    lengths = checked_lengths(lengths, batch, steps)
    held = _contiguous(*flat)
    weights = (ctypes.c_void_p * len(held))(*_ptrs(*held))
    out, h_n, c_n, inner, revs, works = _stack_buffers(plan, mode, layers, directions, x, flat)
    scratch = x.new_empty(steps, batch, size) if directions == 2 else None
    status = plan.forward(plan.ints, *_ptrs(x, lengths), weights, *_ptrs(inner, out, revs, h_n),
                          *_ptrs(c_n if mode == "LSTM" else None, works), plan.work_at_c, *_ptrs(scratch))
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the forward kernel's scratch")
    return out, h_n, c_n, inner, revs, works


def _stack_buffers(plan: _StackPlan, mode: str, layers: int, directions: int, x: Tensor,
                   flat: Sequence[Tensor | None]) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """A stack's outputs, made for its forward pass to fill: out (T, B, D*R), h_n (L*D, B, R),
    c_n (L*D, B, H) (LSTM; else empty); inner (L-1, T, B, D*R), revs (the second direction's
    reversed inputs: layer 0's T*B*I numbers, then each other layer's T*B*D*R) and the cells'
    workspaces (plan.works numbers), None where there are none."""
    steps, batch, inputs = x.shape
    gates, size = flat[4].shape  # type: ignore[union-attr]
    cells, wide, rows = layers * directions, directions * size, steps * batch
    return (x.new_empty(steps, batch, wide), x.new_empty(cells, batch, size),
            x.new_empty(cells, batch, gates // 4) if mode == "LSTM" else x.new_empty(0),
            x.new_empty(layers - 1, steps, batch, wide) if layers > 1 else None,
            x.new_empty(rows * inputs + (layers - 1) * rows * wide) if directions == 2 else None,
            x.new_empty(plan.works))


def run_stack_backward(plan: _StackPlan, mode: str, layers: int, directions: int, x: Tensor, lengths: Tensor | None,
                       flat: Sequence[Tensor | None], saved: Sequence[Tensor | None], d_out: Tensor | None,
                       d_hn: Tensor | None, d_cn: Tensor | None, needs_x: bool, needs_flat: Sequence[bool]
                       ) -> tuple[Tensor | None, list[Tensor | None]]:
    """The backward pass of run_stack_forward in one kernel call (rnn_stack_backward), from the
    gradients of out, h_n and c_n (None: zeros); saved: its inner, revs and workspaces. Returns
    the input's gradient (None unless needs_x) and flat's (None where needs_flat says no)."""
    held = _contiguous(*flat)
    weights = (ctypes.c_void_p * len(held))(*_ptrs(*held))
    # (held is contiguous, so the gradients are too)
    grads = [None if t is None or not need else torch.empty_like(t) for t, need in zip(held, needs_flat)]
    pointers = (ctypes.c_void_p * len(grads))(*_ptrs(*grads))
    dx = x.new_empty(x.shape) if needs_x else None
    per_layer = STACK_CELL_ARGS * directions
    below = sum(1 << layer for layer in range(layers) if needs_x or any(needs_flat[: per_layer * layer]))
    d_out, d_hn, d_cn = _contiguous(d_out, d_hn, d_cn if mode == "LSTM" else None)
    scratch = x.new_empty(plan.scratch)
    status = plan.backward(plan.ints, *_ptrs(x, lengths), weights, *_ptrs(*saved), plan.work_at_c,
                           *_ptrs(d_out, d_hn, d_cn), pointers, *_ptrs(dx), below, *_ptrs(scratch))
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the backward kernel's scratch")
    return dx, grads


def run_stack_forward_any(plan: _StackPlan, mode: str, layers: int, directions: int, x: Tensor,
                          lengths: Tensor | None, flat: Sequence[Tensor | None]
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """run_stack_forward at any size: its one kernel call where plan.one_call, else each cell's
    forward kernel in turn from Python, giving the same outputs in the same layout (the
    operator rnnkit::fused_stack, whose outputs have one structure)."""
    if plan.one_call:
        return run_stack_forward(plan, mode, layers, directions, x, lengths, flat)
    steps, batch, inputs = x.shape
    size = flat[4].shape[1]  # type: ignore[union-attr]
    out, h_n, c_n, inner, revs, works = _stack_buffers(plan, mode, layers, directions, x, flat)
    layer_in = x
    for layer in range(layers):
        layer_out = out if layer == layers - 1 else inner[layer]  # type: ignore[index]
        for direction in range(directions):
            k = layer * directions + direction
            h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr = flat[STACK_CELL_ARGS * k : STACK_CELL_ARGS * (k + 1)]
            seen = layer_in
            if direction == 1:
                seen = _stack_seen(revs, layer, steps, batch, inputs, directions * size)  # type: ignore[arg-type]
                seen.copy_(reverse_padded(layer_in, lengths))
            start = plan.work_at[k]
            o, hn, cn, _ = run_forward(mode, seen, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr,  # type: ignore[arg-type]
                                       None, None, None, lengths, None, None, None, True,
                                       work_block=works[start : start + plan.cells[k].saved[0]])
            layer_out[:, :, direction * size : (direction + 1) * size] = (
                reverse_padded(o, lengths) if direction == 1 else o)
            h_n[k] = hn
            if mode == "LSTM":
                c_n[k] = cn
        layer_in = layer_out
    return out, h_n, c_n, inner, revs, works


def _stack_seen(revs: Tensor, layer: int, steps: int, batch: int, inputs: int, wide: int) -> Tensor:
    """The input of layer's second direction, reversed within the lengths, in revs (see
    rnn_stack_forward): (T, B, I) for layer 0, (T, B, D*R) above."""
    rows = steps * batch
    start = 0 if layer == 0 else rows * inputs + (layer - 1) * rows * wide
    width = inputs if layer == 0 else wide
    return revs[start : start + rows * width].view(steps, batch, width)


def run_stack_backward_any(plan: _StackPlan, mode: str, layers: int, directions: int, x: Tensor,
                           lengths: Tensor | None, flat: Sequence[Tensor | None], saved: Sequence[Tensor | None],
                           d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None, needs_x: bool,
                           needs_flat: Sequence[bool]) -> tuple[Tensor | None, list[Tensor | None]]:
    """run_stack_backward at any size: its one kernel call where plan.one_call, else each cell's
    backward kernel in turn from Python, from the top layer down, on what
    run_stack_forward_any saved. Returns the input's gradient and flat's (None where not
    needed, or where no gradient reaches them)."""
    if plan.one_call:
        return run_stack_backward(plan, mode, layers, directions, x, lengths, flat, saved, d_out, d_hn, d_cn,
                                  needs_x, needs_flat)
    inner, revs, works = saved
    steps, batch, inputs = x.shape
    wide = directions * flat[4].shape[1]  # type: ignore[union-attr]

    def seen(k: int) -> Tensor:
        layer = k // directions
        if k % directions == 1:
            return _stack_seen(revs, layer, steps, batch, inputs, wide)  # type: ignore[arg-type]
        return x if layer == 0 else inner[layer - 1]  # type: ignore[index]

    def finals(k: int) -> tuple[Tensor | None, Tensor | None]:
        return None if d_hn is None else d_hn[k], None if d_cn is None or mode != "LSTM" else d_cn[k]

    return cells_backward(mode, layers, directions, lengths, flat, needs_x, needs_flat, d_out, finals, seen,
                          lambda k: works[plan.work_at[k] : plan.work_at[k] + plan.cells[k].saved[0]])  # type: ignore[index]


def cells_backward(mode: str, layers: int, directions: int, lengths: Tensor | None, flat: Sequence[Tensor | None],
                   needs_x: bool, needs_flat: Sequence[bool], d_out: Tensor | None,
                   finals: Callable[[int], tuple[Tensor | None, Tensor | None]], seen: Callable[[int], Tensor],
                   work: Callable[[int], Tensor]) -> tuple[Tensor | None, list[Tensor | None]]:
    """A stack's backward pass from Python: each cell's backward kernel, from the top layer down,
    each direction's input gradient (put back in order) summed into the layer below's output
    gradient. Cell k (layer * D + direction): finals(k), the gradients of its h_n and c_n;
    seen(k), the input it read (reversed within the lengths for direction 1); work(k), its
    forward workspace. Returns the input's gradient and flat's (None where not needed, or where
    no gradient reaches them)."""
    size = flat[4].shape[1]  # type: ignore[union-attr]  # R, from w_hh (G*H, R)
    grads: list[Tensor | None] = [None] * len(flat)
    per_layer = STACK_CELL_ARGS * directions
    d_layer = d_out
    for layer in reversed(range(layers)):
        # a layer needs its input's gradient when x or any weight or state below it needs one
        below = needs_x or any(needs_flat[: per_layer * layer])
        d_in = None
        for direction in range(directions):
            k = layer * directions + direction
            first = STACK_CELL_ARGS * k
            h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr = flat[first : first + STACK_CELL_ARGS]
            nh0, nc0, nw_ih, nb_ih, nw_hh, nb_hh, nw_hr = needs_flat[first : first + STACK_CELL_ARGS]
            needs = Needs(below, nw_ih, nb_ih, nh0, nc0, nw_hh, nb_hh, nw_hr, False, False, False)
            d_part = None
            if d_layer is not None:
                d_part = d_layer if directions == 1 else d_layer[:, :, direction * size : (direction + 1) * size]
                if direction == 1:
                    d_part = reverse_padded(d_part, lengths)
            d_hn, d_cn = finals(k)
            if d_part is None and d_hn is None and d_cn is None or not any(needs):
                continue
            dx, dw_ih, db_ih, dh0, dc0, dw_hh, db_hh, dw_hr, *_ = run_backward(
                mode, d_part, d_hn, d_cn, work(k), seen(k), w_ih, w_hh, w_hr, None, None,  # type: ignore[arg-type]
                lengths, None, None, None, b_ih is not None, b_hh is not None, needs)
            grads[first : first + STACK_CELL_ARGS] = [dh0, dc0, dw_ih, db_ih, dw_hh, db_hh, dw_hr]
            if dx is not None:
                if direction == 1:
                    dx = reverse_padded(dx, lengths)
                d_in = dx if d_in is None else d_in + dx
        d_layer = d_in
    return d_layer if needs_x else None, grads
