"""Long-range memory, the textbook remedies measured: the adding problem, copy memory and selective
copy for cells x remedies x T, each run within one budget of training steps.

    python benchmarks/memory.py [--tasks adding,copy,selective-copy] [--adding-steps 100,200,500,1000]
                                [--copy-steps 100,200,500] [--selective-copy-steps 100,200,500,1000]
                                [--cells rnn,irnn,lstm,gru,ln-lstm,mingru,minlstm]
                                [--remedies none,clip,orthogonal,forget-bias,chrono]
                                [--budget 1500] [--hidden 64] [--layers 1] [--out benchmarks/memory]

Cells: rnn (tanh), irnn (relu, W_hh = I, zero biases: Le et al. 2015), lstm, gru, ln-lstm (the
layer-normalised LSTM), mingru and minlstm (the minimal cells, whose gates read the input alone:
Feng et al. 2024). Remedies, each a change from torch.nn's initialisation without clipping:
none; clip (gradient clipping by norm 1, kept by every remedy after it); orthogonal (W_hh's gate
blocks orthogonal, Saxe et al. 2014); forget-bias (the LSTM's forget-gate bias 1, Jozefowicz et
al. 2015); chrono (the gates' biases for dependencies as long as the sequences, Tallec & Ollivier
2018; the gated cells). A remedy that does not apply to a cell is skipped (the irnn has its own
init; forget-bias is the LSTM's; chrono sets gates; the minimal cells have no W_hh to make
orthogonal). --layers stacks layers (a row of the table per cell and depth).

Every run trains `--budget` Adam steps (lr 1e-3, batches of 50 fresh generated sequences, seed
0) and reports the test metric beside the memoryless baseline (adding: MSE, baseline 0.167;
copy and selective copy: recall accuracy of the 10 symbols, baseline 1/8), and the
gradient-flow verdict (rnnkit.diagnostics.verdict, for the loss at the end of the sequences) of
the model on test data before and after training. Results accumulate in OUT/results.json (a run
already there is not repeated; --again reruns it), and OUT/README.md is rewritten from all of
them with the plots OUT/score-TASK.png (the test score against T, per cell and remedy) and
OUT/gradient_flow-TASK-T.png (before and after training, the clipped runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rnnkit import plots
from rnnkit.diagnostics import gradient_flow, verdict
from rnnkit.pipelines import memory
from rnnkit.pipelines._runs import Diverged
from rnnkit.training import TrainConfig

CELLS = ("rnn", "irnn", "lstm", "gru", "ln-lstm", "mingru", "minlstm")
TASKS = ("adding", "copy", "selective-copy")
REMEDIES = ("none", "clip", "orthogonal", "forget-bias", "chrono")
BATCH = 50


def applies(cell: str, remedy: str) -> bool:
    if cell == "irnn":
        return remedy in ("none", "clip")
    if cell in ("mingru", "minlstm"):
        return remedy in ("none", "clip", "chrono")
    if remedy == "forget-bias":
        return cell in ("lstm", "ln-lstm")
    if remedy == "chrono":
        return cell != "rnn"
    return True


def config(task: str, steps: int, cell: str, remedy: str, budget: int, hidden: int, layers: int) -> memory.MemoryConfig:
    return memory.MemoryConfig(
        task=task, steps=steps, cell="lstm" if cell == "ln-lstm" else cell, hidden_size=hidden, num_layers=layers,
        init={"orthogonal": "orthogonal", "chrono": "chrono"}.get(remedy, "default"),
        layer_norm=cell == "ln-lstm", forget_bias=1.0 if remedy == "forget-bias" else None,
        train_size=BATCH * budget, val_size=200, test_size=1000, curriculum="off",
        train=TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, patience=None, lr_patience=1000,
                          clip_norm=None if remedy == "none" else 1.0, seed=0))


def flow_of(model: Any, task: str, test: Any) -> Any:
    """The gradient flow of the loss at the end of the sequences: adding, its loss; copy and
    selective copy, the loss of the 10 recalled symbols alone (the blanks before them need no
    memory)."""
    x, y = test.tensors[0][:200], test.tensors[1][:200]
    loss = (lambda m, b: F.mse_loss(m(b[0]), b[1])) if task == "adding" else (
        lambda m, b: memory.copy_loss(m(b[0])[:, -10:], b[1][:, -10:]))
    return gradient_flow(model, (x, y), loss)


def run_one(task: str, steps: int, cell: str, remedy: str, budget: int, hidden: int, layers: int) -> dict[str, Any]:
    cfg = config(task, steps, cell, remedy, budget, hidden, layers)
    keep: dict[str, Any] = {}
    row = {"task": task, "steps": steps, "cell": cell, "remedy": remedy, "budget": budget, "hidden": hidden,
           "layers": layers}
    try:
        metrics = memory.train(cfg, None, keep=keep)
    except Diverged as error:  # within its only epoch: no weights to score
        return {**row, "diverged": str(error), "test": None, "seconds": 0.0}
    model, test = keep["model"].eval(), keep["test"]
    torch.manual_seed(cfg.train.seed)  # memory.train draws its model's weights right after this seed
    fresh = memory.MemoryModel(model.config).eval()
    flow_before, flow_after = flow_of(fresh, task, test), flow_of(model, task, test)
    before, after = verdict(flow_before), verdict(flow_after)
    return {**row, "test": metrics["test"], "baseline": metrics["baseline"], "stopped": metrics["stopped"],
            "seconds": metrics["train_seconds"], "verdict_before": before.verdict, "verdict_after": after.verdict,
            "ratio_before": before.ratio, "ratio_after": after.ratio,
            "flow_before": flow_before.norms["rnn.l0"].tolist(), "flow_after": flow_after.norms["rnn.l0"].tolist()}


def score(r: dict[str, Any]) -> float:
    return r["test"]["mse"] if r["task"] == "adding" else r["test"]["recall_accuracy"]


def solved(r: dict[str, Any]) -> bool:
    """adding: MSE below a tenth of the baseline's; copy and selective copy: recall above 0.9."""
    if r.get("diverged"):
        return False
    return score(r) < 0.1 * r["baseline"]["mse"] if r["task"] == "adding" else score(r) > 0.9


def shown(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("diverged"):
        return "diverged"
    text = f"{score(r):.4f}" if r["task"] == "adding" else f"{score(r):.3f}"
    if "became" in r["stopped"]:
        text += " (NaN stop)"
    return f"**{text}**" if solved(r) else text


def layers_of(r: dict[str, Any]) -> int:
    return int(r.get("layers", 1))  # runs from before --layers: one layer


def label(cell: str, layers: int) -> str:
    return cell if layers == 1 else f"{cell} x{layers}"


def table(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        ts = sorted({r["steps"] for r in rows})
        what = ("test MSE (baseline: always predict 1, 0.167; bold: below 0.0167)" if task == "adding" else
                "test recall accuracy of the 10 symbols (baseline: a uniform guess, 0.125; bold: above 0.9)")
        lines += [f"### {task}: {what}", "", "| cell | remedy | " + " | ".join(f"T = {t}" for t in ts) +
                  " | gradient flow before -> after training (T = " + str(ts[0]) + ") |",
                  "|---|---|" + "---|" * len(ts) + "---|"]
        for cell in CELLS:
            for layers in sorted({layers_of(r) for r in rows if r["cell"] == cell}):
                for remedy in REMEDIES:
                    found = {r["steps"]: r for r in rows if (r["cell"], layers_of(r), r["remedy"]) == (cell, layers, remedy)}
                    if not found:
                        continue
                    first = found.get(ts[0])
                    first = None if first is None or first.get("diverged") else first
                    flow = (f"{first['verdict_before']} ({first['ratio_before']:.0e}) -> {first['verdict_after']} "
                            f"({first['ratio_after']:.0e})" if first else "")
                    lines.append(f"| {label(cell, layers)} | {remedy} | " + " | ".join(shown(found.get(t)) for t in ts)
                                 + f" | {flow} |")
        lines.append("")
    return "\n".join(lines)


def score_plot(results: list[dict[str, Any]], task: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    rows = [r for r in results if r["task"] == task]
    styles = dict(zip(REMEDIES, ["dotted", "dashdot", "dashed", (0, (1, 1)), "solid"]))
    colours = dict(zip(CELLS, ["tab:gray", "tab:purple", "tab:blue", "tab:green", "tab:orange", "tab:red",
                               "tab:brown"]))
    markers = {1: "o", 2: "s", 3: "^"}
    for cell in CELLS:
        for layers in sorted({layers_of(r) for r in rows if r["cell"] == cell}):
            for remedy in REMEDIES:
                pts = sorted((r["steps"], score(r)) for r in rows if (r["cell"], layers_of(r), r["remedy"]) ==
                             (cell, layers, remedy) and not r.get("diverged"))
                if pts:
                    ax.plot(*zip(*pts), marker=markers.get(layers, "D"), linestyle=styles[remedy], color=colours[cell],
                            label=f"{label(cell, layers)}, {remedy}")
    base = next(r for r in rows if not r.get("diverged"))["baseline"]["mse" if task == "adding" else "recall_accuracy"]
    ax.axhline(base, color="black", linewidth=1, label="memoryless baseline")
    ax.set_xscale("log")
    steps = sorted({r["steps"] for r in rows})
    ax.set_xticks(steps, [str(t) for t in steps])
    ax.minorticks_off()
    if task == "adding":
        ax.set_yscale("log")
    ax.set(xlabel="T (steps)", ylabel="test MSE" if task == "adding" else "test recall accuracy",
           title=f"{task}: the test score of every run against T")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write(out: Path, saved: dict[str, Any]) -> None:
    results = saved["results"]
    budgets = sorted({(r["budget"], r["hidden"]) for r in results})
    seconds = sum(r["seconds"] for r in results)  # a diverged run counts 0
    text = ("# Long-range memory: the textbook remedies and the minimal cells, measured\n\n"
            "Made by `python benchmarks/memory.py` (the commands below) on the project's shared 2-core CPU; "
            f"{len(results)} runs, {seconds / 60:.0f} minutes of training in all. Every run is seeded and trains one "
            "budget of Adam steps (lr 1e-3, batches of 50 freshly generated sequences), "
            + ", ".join(f"{b} steps with {h} hidden units" for b, h in budgets) + "; the scores repeat on a CPU.\n\n"
            "Remedies (each keeps the clipping of `clip`): `none`, torch.nn's initialisation without clipping; "
            "`clip`, gradient clipping by norm 1; `orthogonal`, W_hh's gate blocks orthogonal; `forget-bias`, the "
            "LSTM's forget-gate bias 1; `chrono`, the gates set for dependencies as long as the sequences. "
            "The cells `mingru` and `minlstm` are the minimal cells (their gates read the input alone, and each "
            "layer trains for all steps at once); `x2`, `x3`: stacked layers. "
            "The last column is `rnnkit.diagnostics.verdict` on the model's gradient flow over test data, before "
            "and after training, with the ratio of the first step's gradient norm to the last's (copy: of the loss "
            "of the 10 recalled symbols, whose gradient must reach the first steps, where the symbols were read; "
            "selective copy scatters those symbols among the first T + 9 steps)."
            "\n\n"
            "An empty cell was not run; `diverged`: the loss became infinite within the budget.\n\n"
            "Commands:\n\n" + "\n".join(f"    {c}" for c in saved["commands"]) + "\n\n" + table(results) +
            "\nPlots: `score-TASK.png` (every run's test score against T), "
            "`gradient_flow-TASK-T.png` (the gradient flow of the clipped runs before and after training).\n")
    (out / "README.md").write_text(text)
    for task in TASKS:
        if any(r["task"] == task for r in results):
            (out / f"score-{task}.png").write_bytes(score_plot(results, task))
        for t in sorted({r["steps"] for r in results if r["task"] == task}):
            lines = {}
            for r in results:
                if (r["task"], r["steps"]) == (task, t) and r["remedy"] in ("clip", "chrono") and not r.get("diverged"):
                    name = label(r["cell"], layers_of(r))
                    lines[f"{name} {r['remedy']}, before"] = r["flow_before"]
                    lines[f"{name} {r['remedy']}, after"] = r["flow_after"]
            if lines:
                (out / f"gradient_flow-{task}-{t}.png").write_bytes(
                    plots.gradient_flow(lines, f"{task}, T={t}: fresh and trained, on test data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--adding-steps", default="100,200,500,1000")
    parser.add_argument("--copy-steps", default="100,200,500")
    parser.add_argument("--selective-copy-steps", default="100,200,500,1000")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--remedies", default=",".join(REMEDIES))
    parser.add_argument("--budget", type=int, default=1500, help="Adam steps per run.")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1, help="Stacked layers.")
    parser.add_argument("--out", default="benchmarks/memory")
    parser.add_argument("--again", action="store_true", help="Rerun runs that results.json already holds.")
    parser.add_argument("--table-only", action="store_true", help="Rewrite README.md and the plots from results.json.")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if "commands" not in saved:  # a results.json of the older table is replaced
        saved = {"commands": [], "results": []}
    if not args.table_only:
        command = "python benchmarks/memory.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("again", "table_only", "out"))
        if command not in saved["commands"]:
            saved["commands"].append(command)
        for task in args.tasks.split(","):
            for steps in (int(s) for s in getattr(args, f"{task.replace('-', '_')}_steps").split(",")):
                for cell in args.cells.split(","):
                    for remedy in args.remedies.split(","):
                        if not applies(cell, remedy):
                            continue
                        key = (task, steps, cell, remedy, args.budget, args.hidden, args.layers)
                        old = [r for r in saved["results"] if (r["task"], r["steps"], r["cell"], r["remedy"],
                                                               r["budget"], r["hidden"], layers_of(r)) == key]
                        if old and not args.again:
                            continue
                        start = time.perf_counter()
                        r = run_one(task, steps, cell, remedy, args.budget, args.hidden, args.layers)
                        saved["results"] = [x for x in saved["results"] if x not in old] + [r]
                        path.write_text(json.dumps(saved, indent=1))  # each run kept as soon as it ends
                        flow = "" if r.get("diverged") else f"{r['verdict_before']} -> {r['verdict_after']}"
                        print(f"{task:<14} T={steps:<4} {label(cell, args.layers):<10} {remedy:<11} {shown(r):>10}  {flow}  "
                              f"{time.perf_counter() - start:.0f} s", flush=True)
    write(out, saved)
    print(table(saved["results"]))


if __name__ == "__main__":
    main()
