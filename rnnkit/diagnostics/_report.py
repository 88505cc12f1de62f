"""`rnnkit diagnose`: freshly initialised cells on random sequences, or a trained run on its
validation data; the numbers, the verdicts and two plots."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkit
from rnnkit.diagnostics._flow import gradient_flow, hidden_stats, spectral_radii, verdict

REPORT_CELLS = ("rnn", "lstm", "gru", "irnn")


def fresh_layer(cell: str, *, input_size: int, hidden: int, layers: int, init: str, nonlinearity: str) -> nn.Module:
    """irnn: a relu RNN with W_hh = I and zero biases (Le et al. 2015), whatever init says."""
    if cell in ("rnn", "irnn"):
        return rnnkit.RNN(input_size, hidden, layers, nonlinearity="relu" if cell == "irnn" else nonlinearity,
                          init="identity" if cell == "irnn" else init)
    return {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[cell](input_size, hidden, layers, init=init)


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
                            nonlinearity=nonlinearity)
        flow = gradient_flow(layer, x, lambda m, b: (m(b)[0][-1] @ readout).sum())
        stats = hidden_stats(layer, x, lambda m, b: m(b))
        report["cells"][cell] = {"verdict": verdict(flow).to_json(), "gradient_flow": flow.to_json(),
                                 "hidden_stats": stats.to_json(), "spectral_radius": spectral_radii(layer)}  # type: ignore[arg-type]
    return report


def write_report(report: dict[str, Any], out: str | os.PathLike[str], *, title: str) -> list[Path]:
    """DIR/diagnostics.json, DIR/gradient_flow.png, DIR/hidden_stats.png (each written whole)."""
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
    written = []
    for name, content in files.items():
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, folder / name)
        written.append(folder / name)
    return written


def diagnose_run(run_path: str | Path, *, batch: int = 64) -> dict[str, Any]:
    """A trained run (classify, forecast, lm, seq2seq (its encoder), adding or copy) on a batch of its
    validation data."""
    from rnnkit.runs import read_run

    run = read_run(run_path)
    task = run.config.get("task")
    model: nn.Module
    if task in ("adding", "copy"):
        from rnnkit.pipelines import memory
        from rnnkit.pipelines._runs import pipeline_config

        model, _ = memory.load(run_path)
        generated = memory.make_data(pipeline_config(run_path, str(task), memory.MemoryConfig))[1]
        x, y = generated.tensors[0][:batch], generated.tensors[1][:batch]
        loss_fn: Callable[[nn.Module, Any], Tensor] = (
            (lambda m, b: F.mse_loss(m(b[0]), b[1])) if task == "adding" else (lambda m, b: memory.copy_loss(m(b[0]), b[1])))
        data: Any = (x, y)
        run_fn: Callable[[nn.Module, Any], Any] = lambda m, b: m(b[0])  # noqa: E731
    elif task == "classify":
        from rnnkit.pipelines import classify
        from rnnkit.pipelines._runs import pipeline_config

        model, config, extras = classify.load(run_path)
        cfg_c = pipeline_config(run_path, "classify", classify.ClassifyConfig)
        labelled = classify.load_data(cfg_c)
        _, val, _ = classify.split(labelled.y, cfg_c.val_fraction, cfg_c.test_fraction, cfg_c.train.seed)
        val = val[:batch]
        target = torch.from_numpy(labelled.y[val])
        if config["input"]["kind"] == "text":
            from rnnkit.data import Vocabulary, pad_batch

            vocab = Vocabulary.from_json(extras["vocabulary"])
            tokens, lengths = pad_batch([vocab.encode(labelled.texts[i]) for i in val],  # type: ignore[union-attr]
                                        max_length=extras["max_length"])
            data = (tokens, lengths, target)
            loss_fn = lambda m, b: F.cross_entropy(m(b[0], b[1]), b[2])  # noqa: E731
            run_fn = lambda m, b: m(b[0], b[1])  # noqa: E731
        else:
            data = (torch.from_numpy(labelled.x[val]), target)  # type: ignore[union-attr]
            loss_fn = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
            run_fn = lambda m, b: m(b[0])  # noqa: E731
    elif task == "forecast":
        from rnnkit.models import NToOne, NToOneConfig
        from rnnkit.pipelines import forecast
        from rnnkit.pipelines._runs import pipeline_config

        model = NToOne(NToOneConfig(**run.config["model"]))
        model.load_state_dict(run.weights)
        windows = forecast.prepare(pipeline_config(run_path, "forecast", forecast.ForecastConfig)).data["validation"]
        data = (windows.tensors[0][:batch], windows.tensors[1][:batch])
        loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
        run_fn = lambda m, b: m(b[0])  # noqa: E731
    elif task == "lm":
        from rnnkit.pipelines import lm
        from rnnkit.pipelines._runs import pipeline_config

        model, _, _ = lm.load(run_path)
        part = lm.prepare(pipeline_config(run_path, "lm", lm.LMConfig)).data["validation"]
        items = [part[i] for i in range(min(batch, getattr(part, "rows", batch), len(part)))]  # streams: chunk 0
        data = (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))  # (B, K) each
        loss_fn = lambda m, b: F.cross_entropy(m(b[0])[0].transpose(1, 2), b[1])  # noqa: E731
        run_fn = lambda m, b: m(b[0])  # noqa: E731
    elif task == "seq2seq":  # the encoder is the rnnkit layer: how far back into the source the gradient reaches
        from rnnkit.data import Vocabulary, pad_batch
        from rnnkit.pipelines import seq2seq
        from rnnkit.pipelines._runs import pipeline_config

        model, _, extras = seq2seq.load(run_path, "seq2seq")
        sources, targets, (_, val_index, _) = seq2seq.load_split(pipeline_config(run_path, "seq2seq",
                                                                                 seq2seq.Seq2SeqTaskConfig))
        source_vocab = Vocabulary.from_json(extras["source_vocabulary"])
        target_vocab = seq2seq.TargetVocabulary.from_json(extras["target_vocabulary"])
        chosen = val_index[:batch]
        items = [(source_vocab.encode(sources[i]), target_vocab.encode(targets[i])) for i in chosen]
        width = max(len(t) for _, t in items) + 1
        data = seq2seq.make_collate(width, False)(items)  # [source, lengths, target_in, target_out]
        loss_fn = lambda m, b: seq2seq.masked_loss(m(b[0], b[1], b[2]), b[3])  # noqa: E731
        run_fn = lambda m, b: m(b[0], b[1], b[2])  # noqa: E731
    else:
        raise ValueError(f"rnnkit diagnose RUN takes classify, forecast, lm, seq2seq, adding and copy runs; {run_path} "
                         f"is a {task!r} run (in Python, rnnkit.diagnostics.gradient_flow takes any model)")
    model.eval()
    flow = gradient_flow(model, data, loss_fn)
    stats = hidden_stats(model, data, run_fn)
    radii = {name: spectral_radii(m) for name, m in model.named_modules() if isinstance(m, rnnkit.layers._base.RecurrentLayer)}
    return {"setup": {"run": str(run_path), "task": task, "batch": f"{batch} validation examples at most",
                      "norm": "Frobenius norm of dL/dh_t over the batch and the hidden units"},
            "cells": {"model": {"verdict": verdict(flow).to_json(), "gradient_flow": flow.to_json(),
                                "hidden_stats": stats.to_json(), "spectral_radius": radii}}}
