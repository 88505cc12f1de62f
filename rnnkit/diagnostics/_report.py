"""`rnnkit diagnose`: freshly initialised cells on random sequences, or a trained run on its
validation data; the numbers, the verdicts and the plots (for a run, also the hidden state of one
example over time)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import rnnkit
from rnnkit._extras import needs_extras
from rnnkit.diagnostics._flow import Layer, gradient_flow, hidden_stats, hidden_trace, spectral_radii, verdict
from rnnkit.runs import write_atomically
from rnnkit.tasks import TaskBatch

REPORT_CELLS = ("rnn", "lstm", "gru", "irnn", "mingru", "minlstm")


def fresh_layer(cell: str, *, input_size: int, hidden: int, layers: int, init: str, nonlinearity: str,
                steps: int | None = None) -> nn.Module:
    """irnn: a relu RNN with W_hh = I and zero biases (Le et al. 2015), whatever init says.
    init="chrono" (the gated cells): the gates set for dependencies of up to `steps` steps. The
    minimal cells (mingru, minlstm) take init default or chrono (they have no W_hh)."""
    if cell in ("mingru", "minlstm"):
        if init not in ("default", "chrono"):
            raise ValueError(f"init {init} sets W_hh, which {cell} does not have: choose --init default or chrono")
        layer_class = rnnkit.MinGRU if cell == "mingru" else rnnkit.MinLSTM
        return layer_class(input_size, hidden, layers, init=init, chrono_max=steps if init == "chrono" else None)
    if cell in ("rnn", "irnn"):
        if init == "chrono" and cell == "rnn":
            raise ValueError("init chrono sets the gates of lstm and gru: the vanilla rnn has none "
                             "(choose --cells lstm,gru, or another --init)")
        return rnnkit.RNN(input_size, hidden, layers, nonlinearity="relu" if cell == "irnn" else nonlinearity,
                          init="identity" if cell == "irnn" else init)
    return {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[cell](input_size, hidden, layers, init=init,
                                                          chrono_max=steps if init == "chrono" else None)


@needs_extras
def diagnose_cells(cells: Sequence[str], *, steps: int, hidden: int, layers: int = 1, init: str = "default",
                   nonlinearity: str = "tanh", input_size: int = 8, batch: int = 32, seed: int = 0) -> dict[str, Any]:
    """Each cell, freshly initialised, reads the same random sequences x (T, B, input_size) ~ N(0, 1);
    the loss is a fixed random linear read-out of the last layer's h at the last step (the N -> 1
    case). Per cell: the gradient flow, its verdict, hidden-state statistics and the spectral radii
    of W_hh."""
    unknown = [c for c in cells if c not in REPORT_CELLS]
    if unknown or not cells:
        raise ValueError(f"unknown cell {unknown}: choose from {', '.join(REPORT_CELLS)}")
    if steps < 2:
        raise ValueError(f"--steps must be >= 2, got {steps}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, input_size, generator=g)
    readout = torch.randn(hidden, generator=g) / hidden**0.5
    report: dict[str, Any] = {
        "setup": {"steps": steps, "hidden": hidden, "layers": layers, "init": init, "nonlinearity": nonlinearity,
                  "input": f"x ~ N(0, 1), {input_size} features, batch {batch}, seed {seed}",
                  "loss": "a fixed random linear read-out of the last layer's h at the last step",
                  "norm": "Frobenius norm of dL/dh_t over the batch and the hidden units"},
        "cells": {},
    }
    for cell in cells:
        torch.manual_seed(seed)
        layer = fresh_layer(cell, input_size=input_size, hidden=hidden, layers=layers, init=init,
                            nonlinearity=nonlinearity, steps=steps)
        flow = gradient_flow(layer, x, lambda m, b: (m(b)[0][-1] @ readout).sum())
        stats = hidden_stats(layer, x, lambda m, b: m(b))
        report["cells"][cell] = {"verdict": verdict(flow).to_json(), "gradient_flow": flow.to_json(),
                                 "hidden_stats": stats.to_json(), "spectral_radius": spectral_radii(layer)}  # type: ignore[arg-type]
    return report


@needs_extras
def write_report(report: dict[str, Any], out: str | os.PathLike[str], *, title: str) -> list[Path]:
    """DIR/diagnostics.json, DIR/gradient_flow.png, DIR/hidden_stats.png and, for a run,
    DIR/hidden_state.png (each written whole)."""
    from rnnkit import plots

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    lines, stats = {}, {}
    for cell, r in report["cells"].items():
        for key, norms in r["gradient_flow"]["norms"].items():
            if not key.endswith("_reverse"):
                lines[f"{cell} {key}" if len(r["gradient_flow"]["norms"]) > 1 else cell] = norms
        for key, s in r["hidden_stats"].items():
            stats[f"{cell} {key}" if len(r["hidden_stats"]) > 1 else cell] = s
    files = {"diagnostics.json": json.dumps(report, indent=1).encode(),
             "gradient_flow.png": plots.gradient_flow(lines, title),
             "hidden_stats.png": plots.hidden_stats(stats, title)}
    trace = report.get("hidden_state")
    if trace is not None:  # one example's h_t, for a run
        files["hidden_state.png"] = plots.hidden_state(np.asarray(trace["h"]), f"{title}: {trace['layer']}, first "
                                                       "example", trace.get("tokens"))
    written = []
    for name, content in files.items():
        write_atomically(folder / name, content)
        written.append(folder / name)
    return written


@needs_extras
def diagnose_run(batch: TaskBatch) -> dict[str, Any]:
    """A trained model on a batch of its data (rnnkit.pipelines.open_task(RUN) gives one for a
    run folder of any task): the gradient flow of its loss, the hidden states, the spectral radii."""
    model = batch.model.eval()
    run_model: Callable[[nn.Module, Any], Any] = lambda m, b: m(*b)  # noqa: E731
    flow = gradient_flow(model, batch.inputs, batch.loss)
    stats = hidden_stats(model, batch.inputs, run_model)
    trace = hidden_trace(model, batch.inputs, run_model)
    top = sorted(k for k in trace if not k.endswith("_reverse"))[-1]  # the last layer's forward direction
    radii = {name: spectral_radii(m) for name, m in model.named_modules() if isinstance(m, Layer)}
    return {"setup": {"task": batch.task, "batch": f"{batch.inputs[0].shape[0]} validation examples",
                      "norm": "Frobenius norm of dL/dh_t over the batch and the hidden units"},
            "cells": {"model": {"verdict": verdict(flow).to_json(), "gradient_flow": flow.to_json(),
                                "hidden_stats": stats.to_json(), "spectral_radius": radii}},
            "hidden_state": {"layer": top, "h": trace[top].tolist(),
                             "tokens": None if batch.step_labels is None else list(batch.step_labels)}}
