"""What int8 and bfloat16 inference cost in accuracy: the shipped data sets trained by their
pipelines (`rnnkit train`'s defaults, each run capped at --minutes), then the trained model's test
split evaluated in float32, in int8 (rnnkit.quantize: its recurrent and linear layers) and in
bfloat16 (the whole model, rnnkit's bfloat16 kernels on AVX-512 BF16), the same weights, by the
pipeline itself (train(..., int8=True, bf16=True): metrics "test", "test_int8", "test_bf16").

    python benchmarks/int8_accuracy.py > benchmarks/int8_accuracy.md

Goals (the int8 issue): accuracy within 0.5 points (mnist, surnames, digits), RMSE within 2%
(sunspots, weather), bits per character within 0.02 (the pydoc language model).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rnnkit.pipelines import classify, forecast, lm

RUNS = ("mnist", "surnames", "digits", "sunspots", "weather", "pydoc")


def run(name: str, out: Path, minutes: float) -> tuple[str, str, list[float], str]:
    """Train one data set; (command, metric, [float32, int8, bfloat16], what within means)."""
    forms = ("test", "test_int8", "test_bf16")
    if name in ("mnist", "surnames", "digits"):
        cfg: Any = classify.ClassifyConfig(dataset=name, train=classify.training(name, max_minutes=minutes))
        metrics = classify.train(cfg, out, int8=True, bf16=True)
        return (f"rnnkit train classify --dataset {name}", "accuracy", [metrics[f]["accuracy"] for f in forms],
                "points")
    if name in ("sunspots", "weather"):
        training = forecast._forecast_training()
        training.max_minutes = minutes
        metrics = forecast.train(forecast.ForecastConfig(dataset=name, train=training), out, int8=True, bf16=True)
        return f"rnnkit train forecast --dataset {name}", "RMSE", [metrics[f]["rmse"] for f in forms], "percent"
    cfg = lm.LMConfig()
    cfg.train.max_minutes = minutes
    metrics = lm.train(cfg, out, int8=True, bf16=True)
    return "rnnkit train lm", "bits per character", [metrics[f]["bpc"] for f in forms], "bpc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    parser.add_argument("--minutes", type=float, default=3.0, help="training time of each run, at most")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; each run trained for at most "
          f"{args.minutes:g} minutes (`rnnkit train`'s settings otherwise)\n")
    print("| run | metric (test split) | float32 | int8 | int8 - float32 | bfloat16 | bfloat16 - float32 | "
          "goal (int8) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            start = time.perf_counter()
            command, metric, (f32, i8, b16), unit = run(name, Path(tmp) / name, args.minutes)
            if unit == "points":
                goal, digits = "within 0.5 points", 4

                def delta(v: float) -> str:
                    return f"{100 * (v - f32):+.2f} points"
            elif unit == "percent":
                goal, digits = "within 2%", 3

                def delta(v: float) -> str:
                    return f"{100 * (v / f32 - 1):+.2f}%"
            else:
                goal, digits = "within 0.02 bpc", 4

                def delta(v: float) -> str:
                    return f"{v - f32:+.4f} bpc"
            print(f"| `{command}` ({time.perf_counter() - start:.0f} s) | {metric} | {f32:.{digits}f} | "
                  f"{i8:.{digits}f} | {delta(i8)} | {b16:.{digits}f} | {delta(b16)} | {goal} |", flush=True)


if __name__ == "__main__":
    main()
