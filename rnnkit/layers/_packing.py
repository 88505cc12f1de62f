"""torch's PackedSequence functions under torch.export and the ONNX exporter.

``pack_padded_sequence`` and ``pad_packed_sequence`` call two ATen operators that tracing cannot
follow: ``aten::_pack_padded_sequence``, whose fake kernel gives the packed data the wrong number
of rows, and ``aten::_pad_packed_sequence``, which reads ``batch_sizes``' values in C++. Inside
``exportable_packing()`` the two calls, when traced, run as tensor operations instead, with
sizes known only at run time (sum(lengths) packed rows, max(lengths) steps), which torch.export
keeps as symbols and the ONNX exporter as dynamic dimensions. Called eagerly they run torch's
operators as always: nothing changes outside a trace, and nothing outside the context.

A batch packed inside a trace remembers its padded size (T, B), so that rnnkit's layers unpack
it to the caller's T (a dimension the graph knows) rather than to max(lengths), and the padding
back knows its B.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_PACK = torch._C._VariableFunctions._pack_padded_sequence
_PAD = torch._C._VariableFunctions._pad_packed_sequence
_SCAN = torch.ops.higher_order.scan
_PADDED: dict[int, tuple[weakref.ref[Tensor], tuple[Any, Any]]] = {}
"""id(batch_sizes) of a batch packed in a trace -> (the tensor, the padded batch's (T, B) as
symbolic sizes); by id, as a tensor's == compares values. An entry leaves with its tensor."""


def padded_size(batch_sizes: Tensor) -> tuple[Any, Any] | None:
    """(T, B) of the padded batch that batch_sizes was packed from in a trace, or None."""
    entry = _PADDED.get(id(batch_sizes))
    return entry[1] if entry is not None and entry[0]() is batch_sizes else None


def padded_sizes(batch_sizes: Tensor, steps: Any) -> Tensor:
    """batch_sizes (L,) as (steps,) int64 with 0 past L. (A tensor made at size steps, not
    padded to it: a size that arithmetic on L made would lose steps' example value, and the
    exporters' loops over time would see a size known only at run time.)"""
    sizes = batch_sizes.to(torch.int64)
    index = torch.arange(sizes.shape[0], device=sizes.device)
    return sizes.new_zeros(steps).index_copy(0, index, sizes)


def valid_steps(batch_sizes: Tensor, steps: Any, batch: Any) -> Tensor:
    """(steps, batch) bool: which (step, slot) of the sorted batch holds a packed row; rows in
    this mask's order, step by step, are the packed data's."""
    return torch.arange(batch, device=batch_sizes.device) < padded_sizes(batch_sizes, steps).unsqueeze(1)


def pack(input: Tensor, lengths: Tensor, batch_first: bool) -> tuple[Tensor, Tensor]:
    """aten::_pack_padded_sequence in tensor operations: input (T, B, *), or (B, T, *) with
    batch_first, and lengths (B,) sorted longest first -> data (sum(lengths), *) and
    batch_sizes (max(lengths),) int64."""
    if batch_first:
        input = input.transpose(0, 1)  # (T, B, *)
    steps, batch = input.shape[0], input.shape[1]
    lengths = lengths.to(torch.int64)
    # what torch's operator checks in eager: lengths in [1, T], longest first (checked as the
    # exported graph runs)
    torch._assert_async((lengths >= 1).all(), "pack_padded_sequence: Length of all samples has to be greater "
                        "than 0, but found an element in 'lengths' that is <= 0")
    torch._assert_async((lengths <= steps).all(), "pack_padded_sequence: every length must be at most the "
                        "input's number of steps T")
    torch._assert_async((lengths.sort(descending=True).values == lengths).all(),  # (no slices: B stays free)
                        "pack_padded_sequence: `lengths` array must be sorted in decreasing order when "
                        "`enforce_sorted` is True (or pass enforce_sorted=False)")
    longest = cast(int, lengths.max().item())  # a SymInt while traced (int() would fix its value)
    torch._check(longest >= 1)
    torch._check(longest <= steps)
    valid = torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths  # (T, B)
    batch_sizes = valid.sum(1).narrow(0, 0, longest)  # (max(lengths),)
    data = input[valid.to(input.device)]  # (sum(lengths), *): step by step, longest first
    key = id(batch_sizes)
    _PADDED[key] = (weakref.ref(batch_sizes, lambda _: _PADDED.pop(key, None)), (steps, batch))
    return data, batch_sizes


def pad(data: Tensor, batch_sizes: Tensor, batch_first: bool, padding_value: float,
        total_length: int) -> tuple[Tensor, Tensor]:
    """aten::_pad_packed_sequence in tensor operations: data (N, *) and batch_sizes (L,) ->
    (total_length, B, *), or (B, total_length, *) with batch_first, and lengths (B,) int64."""
    steps = batch_sizes.shape[0]
    torch._check(steps <= total_length)
    known = padded_size(batch_sizes)
    if known is not None:
        batch = known[1]
    else:  # a PackedSequence made outside the trace: the first step holds every sequence
        batch = batch_sizes[0].item()
        torch._check(batch >= 1)
    valid = valid_steps(batch_sizes, total_length, batch)  # (total, B)
    where = valid.to(data.device).nonzero()  # (N, 2): (step, slot) of each packed row, in order
    torch._check(where.shape[0] == data.shape[0])
    out = data.new_full((total_length, batch, *data.shape[1:]), padding_value)
    out = out.index_put((where[:, 0], where[:, 1]), data)
    lengths = valid.sum(0)  # (B,)
    return (out.transpose(0, 1) if batch_first else out), lengths


class _SymbolsBoundEarlier(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Pending unbacked symbols")


@contextlib.contextmanager
def _symbols_bound_earlier() -> Iterator[None]:
    """Around a scan: the ONNX exporter's type-promotion pass reruns the graph on fake tensors
    without a tracer, so the run-time sizes that packing made (nonzero, item) stay pending, and
    the scan operator's fake kernel, which checks that every pending size is one of its own
    outputs, would refuse them. They belong to the earlier operators: the check is relaxed to
    its warning, which is dropped, for the scan's call alone."""
    from torch.fx.experimental import _config as fx_config

    logger, quiet = logging.getLogger("torch.fx.experimental.symbolic_shapes"), _SymbolsBoundEarlier()
    logger.addFilter(quiet)
    try:
        with fx_config.patch(soft_pending_unbacked_not_found_error=True):  # type: ignore[attr-defined]
            yield
    finally:
        logger.removeFilter(quiet)


class _TracedPacking(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if torch.compiler.is_dynamo_compiling():  # (torch traces a scan's body with dynamo)
            return func(*args, **kwargs)
        if func is _SCAN:
            with _symbols_bound_earlier():
                return func(*args, **kwargs)
        if torch.compiler.is_compiling():
            if func is _PACK:
                return pack(*args, **kwargs)
            if func is _PAD:
                return pad(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def exportable_packing() -> Iterator[None]:
    """Let torch.export and torch.onnx.export (dynamo=True) trace torch's
    ``pack_padded_sequence`` and ``pad_packed_sequence`` around rnnkit's
    layers::

        with rnnkit.exportable_packing():
            program = torch.export.export(model, (x, lengths), dynamic_shapes=...)

    The exported graph computes what the model computes eagerly, at any T and B (its packed
    sizes are symbols resolved at run time) and needs nothing of rnnkit's Python to run. Outside
    a trace the functions run torch's own operators, so the context changes no eager result.
    torch.nn's recurrent layers still do not export a PackedSequence, with or without it."""
    with _TracedPacking():
        yield
