"""Long-range memory within a fixed budget: the adding problem and copy memory for T in 50, 100,
200 and each of the vanilla RNN, LSTM, GRU and IRNN, with and without gradient clipping.

    python benchmarks/memory.py [--steps 50,100,200] [--budget 600] [--hidden 64] [--out benchmarks/memory]

Every run trains `--budget` Adam steps (lr 1e-3, batches of 50, fresh generated data, seed 0),
then reports the test metric (adding: MSE, baseline 0.167; copy: cross-entropy per step,
baseline 10 log 8 / (T + 20), and the share of recalled symbols that are right, baseline 1/8).
Writes OUT/results.json, OUT/README.md (the table) and OUT/gradient_flow-TASK-T.png: the
gradient flow of each trained model on test data, one line per cell (clipped runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch.nn.functional as F

from rnnkit import plots
from rnnkit.diagnostics import gradient_flow, verdict
from rnnkit.pipelines import memory
from rnnkit.training import TrainConfig

CELLS = ("rnn", "lstm", "gru", "irnn")


def run_one(task: str, steps: int, cell: str, clip: float | None, budget: int, hidden: int) -> dict:
    batch = 50
    cfg = memory.MemoryConfig(task=task, steps=steps, cell=cell, hidden_size=hidden, train_size=batch * budget,
                              val_size=200, test_size=1000,
                              train=TrainConfig(epochs=1, batch_size=batch, lr=1e-3, patience=None, clip_norm=clip,
                                                lr_patience=1000, seed=0))
    keep: dict = {}
    metrics = memory.train(cfg, None, keep=keep)
    model, test = keep["model"].eval(), keep["test"]
    x, y = test.tensors[0][:200], test.tensors[1][:200]
    loss = (lambda m, b: F.mse_loss(m(b[0]), b[1])) if task == "adding" else (lambda m, b: memory.copy_loss(m(b[0]), b[1]))
    flow = gradient_flow(model, (x, y), loss)
    return {"task": task, "steps": steps, "cell": cell, "clip": clip, "test": metrics["test"],
            "baseline": metrics["baseline"], "training_steps": metrics["training_steps"],
            "stopped": metrics["stopped"], "seconds": metrics["train_seconds"],
            "verdict": verdict(flow).verdict, "flow": flow.norms["rnn.l0"].tolist()}


def table(results: list[dict], budget: int, hidden: int) -> str:
    lines = [f"Budget: {budget} Adam steps of 50 sequences (lr 1e-3, seed 0), {hidden} hidden units, one layer. "
             "Clip: gradient clipping by norm 1.0. Verdict: `rnnkit.diagnostics.verdict` on the trained model's "
             "gradient flow over test data (earliest/latest step norm below 1e-3: vanishing).", ""]
    for task in ("adding", "copy"):
        metric = "test MSE (baseline 0.167)" if task == "adding" else "test cross-entropy / recall accuracy (baseline: 10 log 8 / (T+20) / 0.125)"
        lines += [f"### {task}: {metric}", "", "| T | cell | clip | no clip | verdict (clip) | verdict (no clip) |",
                  "|---|---|---|---|---|---|"]
        for steps in sorted({r["steps"] for r in results}):
            if task == "copy":
                base = next(r for r in results if r["task"] == task and r["steps"] == steps)["baseline"]
                lines.append(f"| {steps} | baseline | {base['cross_entropy']:.4f} / {base['recall_accuracy']:.3f} | | | |")
            for cell in CELLS:
                row = {r["clip"] is not None: r for r in results if (r["task"], r["steps"], r["cell"]) == (task, steps, cell)}
                if not row:
                    continue

                def show(r: dict | None) -> str:
                    if r is None:
                        return "-"
                    t = r["test"]
                    text = f"{t['mse']:.4f}" if task == "adding" else f"{t['cross_entropy']:.4f} / {t['recall_accuracy']:.3f}"
                    return text + (" (NaN stop)" if "became" in r["stopped"] else "")

                clipped, free = row.get(True), row.get(False)
                lines.append(f"| {steps} | {cell} | {show(clipped)} | {show(free)} | "
                             f"{clipped['verdict'] if clipped else '-'} | {free['verdict'] if free else '-'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="50,100,200")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--tasks", default="adding,copy")
    parser.add_argument("--budget", type=int, default=1500)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/memory")
    parser.add_argument("--table-only", action="store_true", help="Rewrite OUT/README.md from OUT/results.json.")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table_only:
        saved = json.loads((out / "results.json").read_text())
        (out / "README.md").write_text(readme(table(saved["results"], saved["budget"], saved["hidden"]), saved))
        return
    out.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.perf_counter()
    for task in args.tasks.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            for cell in args.cells.split(","):
                for clip in (1.0, None):
                    r = run_one(task, steps, cell, clip, args.budget, args.hidden)
                    results.append(r)
                    t = r["test"]
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in t.items())
                    print(f"{task:<6} T={steps:<4} {cell:<5} clip={clip!s:<5} {shown}  {r['verdict']}  "
                          f"{r['seconds']:.1f} s", flush=True)
            lines = {r["cell"]: r["flow"] for r in results if (r["task"], r["steps"]) == (task, steps) and r["clip"]}
            (out / f"gradient_flow-{task}-{steps}.png").write_bytes(
                plots.gradient_flow(lines, f"{task}, T={steps}: trained {args.budget} steps, test data"))
    saved = {"budget": args.budget, "hidden": args.hidden, "seconds": round(time.perf_counter() - start),
             "command": "python benchmarks/memory.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                  vars(args).items() if k != "table_only"),
             "results": results}
    (out / "results.json").write_text(json.dumps(saved, indent=1))
    text = table(results, args.budget, args.hidden)
    (out / "README.md").write_text(readme(text, saved))
    print(text)


def readme(text: str, saved: dict) -> str:
    return ("# Long-range memory: adding problem and copy memory\n\n"
            f"Made by `{saved.get('command', 'python benchmarks/memory.py')}` on the project's 2-core CPU "
            + (f"({saved['seconds']} s in all)" if "seconds" in saved else "(about half an hour, sharing the machine)")
            + ". The numbers are what it printed; every run is seeded, so the metrics repeat on a CPU. The plots "
            "`gradient_flow-TASK-T.png` show the gradient flow of each trained (clipped) model on test data.\n\n"
            + text + "\n")


if __name__ == "__main__":
    main()
