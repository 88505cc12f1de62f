"""The minimal cells beside the classic ones on the shipped data sets: each pipeline's own defaults
(those of `rnnkit train`), only --cell changed.

    python benchmarks/min_quality.py [--jobs mnist,surnames,sunspots,weather,pydoc] [--cells rnn,lstm,gru,mingru,minlstm]
                                     [--seeds 0,1,2] [--lm-minutes 3] [--layers N] [--out benchmarks/min_quality]

Jobs: mnist and surnames (`rnnkit train classify --dataset D`: test accuracy), sunspots and
weather (`rnnkit train forecast --dataset D`: test RMSE), pydoc (`rnnkit train lm`: bits per
character on the held-out tail, with a time budget of --lm-minutes per run, so that the cells
are compared at equal training time rather than at the default 10 minutes each). Each job runs
once per seed in --seeds (the forecasts are small and noisy) and the table gives the mean and
each seed's score. --layers N stacks N layers instead of the pipeline's default (a column of its
own, "mingru x2").

Against the best classic cell (rnn, lstm, gru, at any depth that ran) of each job, the margins
the minimal cells aim for: within 1 point of accuracy, within 5% of RMSE, within 0.05 bits per
character. A second table gives the training seconds of each run (mean over seeds). Results
accumulate in OUT/results.json (a run already there is not repeated; --again reruns it) and
OUT/README.md is rewritten from all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLASSIC = ("rnn", "lstm", "gru")
MINIMAL = ("mingru", "minlstm")
JOBS: dict[str, tuple[list[str], str, str]] = {  # job: the training command's words, the metric, better
    "mnist": (["classify", "--dataset", "mnist"], "accuracy", "higher"),
    "surnames": (["classify", "--dataset", "surnames"], "accuracy", "higher"),
    "sunspots": (["forecast", "--dataset", "sunspots"], "rmse", "lower"),
    "weather": (["forecast", "--dataset", "weather"], "rmse", "lower"),
    "pydoc": (["lm"], "bpc", "lower"),
}


def command(job: str, cell: str, seed: int, lm_minutes: float, layers: int | None, out: Path) -> list[str]:
    words, _, _ = JOBS[job]
    extra = ["--minutes", str(lm_minutes)] if job == "pydoc" else []
    extra += [] if layers is None else ["--layers", str(layers)]
    return [sys.executable, "-m", "rnnkit", "train", *words, "--cell", cell, "--seed", str(seed), *extra, "--out", str(out)]


def run_one(job: str, cell: str, seed: int, lm_minutes: float, layers: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        start = time.perf_counter()
        done = subprocess.run(command(job, cell, seed, lm_minutes, layers, out), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{job} {cell} seed {seed} failed:\n{done.stdout}\n{done.stderr}")
        metrics = json.loads((out / "metrics.json").read_text())
    return {"job": job, "cell": cell, "seed": seed, "lm_minutes": lm_minutes if job == "pydoc" else None, "layers": layers,
            "score": metrics["test"][JOBS[job][1]], "epochs": metrics.get("epochs_run"),
            "train_seconds": metrics.get("train_seconds"), "wall_seconds": time.perf_counter() - start}


def shown(job: str, value: float) -> str:
    return f"{value:.4f}" if JOBS[job][1] == "accuracy" else f"{value:.3f}"


def within(job: str, value: float, best: float) -> tuple[bool, str]:
    """Whether value is within the issue's margin of best, and the gap in the metric's terms."""
    metric = JOBS[job][1]
    if metric == "accuracy":
        gap = (best - value) * 100
        return gap <= 1.0, f"{-gap:+.2f} points"
    if metric == "rmse":
        gap = value / best - 1
        return gap <= 0.05, f"{gap * 100:+.1f}%"
    gap = value - best
    return gap <= 0.05, f"{gap:+.3f} bpc"


def variant(r: dict[str, Any]) -> str:
    """A column: the cell, and its depth where --layers set one."""
    return r["cell"] if r.get("layers") is None else f"{r['cell']} x{r['layers']}"


def variants(results: list[dict[str, Any]]) -> list[str]:
    order = {cell: i for i, cell in enumerate(CLASSIC + MINIMAL)}
    return sorted({variant(r) for r in results}, key=lambda v: (order[v.split()[0]], v))


def table(results: list[dict[str, Any]]) -> str:
    columns = variants(results)
    minimal = [v for v in columns if v.split()[0] in MINIMAL]
    lines = ["| job | metric | " + " | ".join(columns) + " | " + " | ".join(f"{v} vs best classic" for v in minimal) + " |",
             "|---|---|" + "---|" * (len(columns) + len(minimal))]
    for job in JOBS:
        mean: dict[str, float] = {}
        cells = []
        for cell in columns:
            scores = [r["score"] for r in sorted(results, key=lambda r: r["seed"]) if (r["job"], variant(r)) == (job, cell)]
            if not scores:
                cells.append("")
                continue
            mean[cell] = statistics.fmean(scores)
            each = f" ({', '.join(shown(job, s) for s in scores)})" if len(scores) > 1 else ""
            cells.append(shown(job, mean[cell]) + each)
        if not mean:
            continue
        metric, better = JOBS[job][1], JOBS[job][2]
        classic = [v for v in columns if v.split()[0] in CLASSIC and v in mean]  # every depth run
        gaps = []
        for cell in minimal:
            if cell not in mean or not classic:
                gaps.append("")
                continue
            best = (max if better == "higher" else min)(classic, key=lambda c: mean[c])
            ok, gap = within(job, mean[cell], mean[best])
            gaps.append(f"{gap} against {best}, {'within' if ok else 'outside'} the margin")
        name = f"{metric} ({better} is better)"
        lines.append(f"| {job} | {name} | " + " | ".join(cells) + " | " + " | ".join(gaps) + " |")
    return "\n".join(lines) + "\n"


def seconds_table(results: list[dict[str, Any]]) -> str:
    columns = variants(results)
    lines = ["| job | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for job in JOBS:
        cells = []
        for cell in columns:
            seconds = [r["train_seconds"] for r in results if (r["job"], variant(r)) == (job, cell)]
            cells.append(f"{statistics.fmean(seconds):.1f}" if seconds else "")
        if any(cells):
            lines.append(f"| {job} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, saved: dict[str, Any]) -> None:
    results = saved["results"]
    minutes = sorted({r["lm_minutes"] for r in results if r["lm_minutes"] is not None})
    seconds = sum(r["wall_seconds"] for r in results)
    text = ("# The minimal cells beside the classic ones\n\n"
            "Made by `python benchmarks/min_quality.py` (the commands below) on the project's shared 2-core CPU, "
            f"{len(results)} runs, {seconds / 60:.0f} minutes in all. Every run is `rnnkit train` with the pipeline's "
            "defaults and only `--cell` (and `--seed`; `--layers N` in the columns marked xN) changed; the test "
            "score of each, the mean over seeds with "
            "each seed's in brackets. The language model (pydoc) trains for "
            + ", ".join(f"{m:g}" for m in minutes) + " minutes a run (`--minutes`), so there the cells are "
            "compared at equal training time. The margins the minimal cells aim for: within 1 point of accuracy, 5% "
            "of RMSE, 0.05 bits per character of the best classic cell.\n\n"
            "Commands:\n\n" + "\n".join(f"    {c}" for c in saved["commands"]) + "\n\n### Test scores\n\n"
            + table(results) + "\n### Training seconds a run (one run at a time; early stopping ends runs at "
            "different epochs)\n\n" + seconds_table(results))
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--cells", default=",".join(CLASSIC + MINIMAL))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--lm-minutes", type=float, default=3.0)
    parser.add_argument("--layers", type=int, default=None, help="Stacked layers (default: the pipeline's).")
    parser.add_argument("--out", default="benchmarks/min_quality")
    parser.add_argument("--again", action="store_true", help="Rerun runs that results.json already holds.")
    parser.add_argument("--table-only", action="store_true", help="Rewrite README.md from results.json.")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {"commands": [], "results": []}
    if not args.table_only:
        line = (f"python benchmarks/min_quality.py --jobs {args.jobs} --cells {args.cells} --seeds {args.seeds} "
                f"--lm-minutes {args.lm_minutes:g}" + ("" if args.layers is None else f" --layers {args.layers}"))
        if line not in saved["commands"]:
            saved["commands"].append(line)
        for job in args.jobs.split(","):
            if job not in JOBS:
                raise SystemExit(f"unknown job {job!r}: choose from {', '.join(JOBS)}")
            for seed in (int(s) for s in args.seeds.split(",")):
                for cell in args.cells.split(","):
                    minutes = args.lm_minutes if job == "pydoc" else None
                    old = [r for r in saved["results"] if (r["job"], r["cell"], r["seed"], r["lm_minutes"], r.get("layers"))
                           == (job, cell, seed, minutes, args.layers)]
                    if old and not args.again:
                        continue
                    r = run_one(job, cell, seed, args.lm_minutes, args.layers)
                    saved["results"] = [x for x in saved["results"] if x not in old] + [r]
                    path.write_text(json.dumps(saved, indent=1))  # each run kept as soon as it ends
                    print(f"{job:<9} {variant(r):<10} seed {seed}  {shown(job, r['score'])}  {r['wall_seconds']:.0f} s",
                          flush=True)
    write(out, saved)
    print(table(saved["results"]))


if __name__ == "__main__":
    main()
