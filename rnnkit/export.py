"""Export a trained model to one graph, for serving without rnnkit's Python: ONNX (run by
onnxruntime), a torch.export program (.pt2, which torch.export.load reads once rnnkit's
operators are loaded) or an AOTInductor package (.pt2, compiled ahead of time; run by
torch._inductor.aoti_load_package in a process that loaded rnnkit's operator library,
rnnkit.library_path(), and needs nothing else of rnnkit).

The batch and time dimensions stay dynamic. Before the file is put in place, the exported graph
is run on the validation batch it was exported with, and on half of it, and compared with the
model: an export that does not compute what the model computes is never written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.data._files import check_writable
from rnnkit.runs import DiskFullError, out_of_space
from rnnkit.tasks import BATCH, TaskBatch

FORMATS = ("onnx", "pt2", "aoti")
TOLERANCE = 1e-4
"""Largest difference allowed between the exported graph's outputs and the model's (float32)."""


@dataclass(frozen=True)
class Exported:
    """What export wrote: the file, its inputs (name and dimensions) and the check's result."""

    path: Path
    format: str
    inputs: list[tuple[str, str]]  # (name, "(batch, time)"-style dimensions)
    checked: int  # examples the check ran on
    difference: float  # largest absolute difference from the model, over every output
    quantized: str | None = None  # "int8": the model exported is rnnkit.quantize's form of the run's
    cost: float | None = None  # with quantized: its largest difference from the float model's outputs
    scale: float | None = None  # with quantized: the float model's largest output (in absolute value)


def _flatten(outputs: Any) -> list[Tensor]:
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _flatten(o)]
    if outputs is None:
        return []
    raise TypeError(f"cannot compare an output of type {type(outputs).__name__}")


def export(batch: TaskBatch, fmt: str, out: str | os.PathLike[str], *, quantize: str | None = None) -> Exported:
    """Export batch.model with batch.inputs as the example (dims in batch.axes dynamic) to out,
    after checking the exported graph against the model; fmt 'onnx', 'pt2' or 'aoti'.
    quantize='int8': export rnnkit.quantize(model) instead (its recurrent and linear layers int8;
    pt2 and aoti only: ONNX has no operator for rnnkit's int8 kernels), checked against that model,
    and say how far its outputs are from the float model's (Exported.cost)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose from {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}: choose int8")
    if quantize is not None and fmt == "onnx":
        raise ValueError("an int8 model exports as pt2 or aoti (--format pt2 or aoti): ONNX has no operator for "
                         "rnnkit's int8 kernels")
    if batch.not_exportable is not None:
        raise ValueError(f"{batch.task} runs do not export: {batch.not_exportable}")
    target = Path(out)
    if fmt == "aoti" and target.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package is a .pt2 file (torch's loader requires the name): got {target}")
    check_writable(target)
    model = batch.model.eval()
    cost = scale = None
    if quantize is not None:
        from rnnkit.quantized import quantize as to_int8

        int8 = to_int8(model)
        with torch.no_grad():
            pairs = list(zip(_flatten(int8(*batch.inputs)), _flatten(model(*batch.inputs))))
        cost = max((float((a.float() - b.float()).abs().max()) if a.numel() else 0.0) for a, b in pairs)
        scale = max((float(b.float().abs().max()) if b.numel() else 0.0) for _, b in pairs)
        model = int8
    dims = {BATCH: torch.export.Dim("batch", min=1), "time": torch.export.Dim("time", min=1)}
    shapes = tuple({index: dims[axis] for index, axis in axes.items()} for axes in batch.axes)
    half = tuple(t[: max(1, t.shape[0] // 2)] if 0 in axes and axes[0] == BATCH else t
                 for t, axes in zip(batch.inputs, batch.axes))
    with torch.no_grad():
        expected = [_flatten(model(*inputs)) for inputs in (batch.inputs, half)]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix or f".{fmt}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as a file the user wrote, not mkstemp's private mode
    try:
        if fmt in ("pt2", "aoti"):
            program = torch.export.export(model, batch.inputs, dynamic_shapes=shapes)
            loaded: Any
            if fmt == "pt2":
                torch.export.save(program, tmp)
                loaded = torch.export.load(tmp).module()
            else:
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                loaded = torch._inductor.aoti_load_package(str(tmp))
            with torch.no_grad():
                got = [_flatten(loaded(*inputs)) for inputs in (batch.inputs, half)]
            names = [str(n.name) for n in program.graph.nodes
                     if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        else:
            got, names = _onnx(model, batch, shapes, tmp, (batch.inputs, half))
        difference = max(float((a.float() - torch.as_tensor(b).float()).abs().max()) if a.numel() else 0.0
                         for run_expected, run_got in zip(expected, got) for a, b in zip(run_expected, run_got))
        if difference > TOLERANCE:
            raise RuntimeError(f"the exported graph differs from the model by {difference:.2e} (more than "
                               f"{TOLERANCE:g}) on the validation batch: nothing written")
        os.replace(tmp, target)
    except Exception as error:
        if out_of_space(error):  # torch's writers raise their own errors over the OSError
            raise DiskFullError(f"cannot write {target}: no space left on the device that holds {target.parent}: "
                                "nothing written") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    described = [(name, "(" + ", ".join(axes.get(i, str(size)) for i, size in enumerate(t.shape)) + ")")
                 for name, t, axes in zip(names, batch.inputs, batch.axes)]
    return Exported(target, fmt, described, int(batch.inputs[0].shape[0]), difference, quantize, cost, scale)


def _onnx(model: torch.nn.Module, batch: TaskBatch, shapes: tuple[dict[int, Any], ...], path: Path,
          runs: tuple[tuple[Tensor, ...], ...]) -> tuple[list[list[Any]], list[str]]:
    """Export to ONNX at path; the outputs of onnxruntime on each of runs, and the input names."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the exporter's)
    except ImportError:
        raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'rnnkit[onnx]'") from None
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the exporter's notes on torch's internals, not on this model
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf",
                                    category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            program = torch.onnx.export(model, batch.inputs, dynamic_shapes=shapes, dynamo=True, verbose=False)
    finally:
        registry_log.setLevel(level)
    assert program is not None
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    results = [[torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]
               for inputs in runs]
    return results, names
