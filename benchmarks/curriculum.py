"""Length curriculum for the memory tasks: a run trained at a short T, tested at longer T as it
is, then trained further at the long T for a time budget, with its recall there along the way.

    rnnkit train selective-copy --steps 100 --cell mingru --layers 3 --out runs/sel100
    python benchmarks/curriculum.py runs/sel100 --steps 1000 > benchmarks/curriculum.txt

The further training is the pipeline's (Adam, the run's learning rate, gradients clipped to norm
1, batches of the run's size, fresh sequences each step); recall is measured on 500 test
sequences of its own seed.
"""

from __future__ import annotations

import argparse
import time

import torch

from rnnkit.data._memory import copy_memory, selective_copy
from rnnkit.pipelines import memory


def recall(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 100]) for i in range(0, len(x), 100)])
    model.train()
    return memory.copy_accuracy(logits, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a copy or selective-copy run folder")
    parser.add_argument("--steps", type=int, default=1000, help="the long T")
    parser.add_argument("--lengths", default="100,200,500,1000", help="the T it is tested at as trained")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds of further training at the long T")
    parser.add_argument("--every", type=int, default=200, help="training steps between measurements")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, config = memory.load(args.run)
    task, pipeline = config["task"], config["pipeline"]
    make = selective_copy if task == "selective-copy" else copy_memory
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {task}: {pipeline['cell']} x "
          f"{pipeline['num_layers']} layers of {pipeline['hidden_size']}, trained at T = {pipeline['steps']}")
    for steps in (int(t) for t in args.lengths.split(",")):
        print(f"as trained, recall at T = {steps}: {recall(model, *make(500, steps, seed=12345)):.4f}")

    test = make(500, args.steps, seed=12345)
    train = pipeline["train"]
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"])
    start, step = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < args.budget:
        x, y = make(train["batch_size"], args.steps, seed=1000 + step)
        optimizer.zero_grad()
        loss = memory.copy_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.every == 0:
            print(f"trained at T = {args.steps}: {step} steps, {time.perf_counter() - start:.0f} s, "
                  f"recall {recall(model, *test):.4f}", flush=True)


if __name__ == "__main__":
    main()
