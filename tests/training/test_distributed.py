"""Data-parallel training: the same command under torchrun with 2 processes on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.end_to_end  # two processes of torchrun, about 9 s: CI runs it (pytest -m end_to_end)
def test_torchrun_two_processes_train_one_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnkit",
         "train", "classify", "--hidden", "16", "--epochs", "3", "--lr", "0.01", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # one process reports and writes; the Trainer checked that both ended with the same weights
    assert result.stdout.count("epoch   1 ") == 1 and result.stdout.count("run folder:") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["test"]["accuracy"] > metrics["baseline"]["accuracy"] + 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.end_to_end  # two processes of torchrun, a few seconds: CI runs it
def test_torchrun_trains_through_a_length_curriculum(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The training set changes size between epochs (100 sequences at T = 100, then 33 at
    T = 300): each process's sampler follows it."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnkit",
         "train", "copy", "--steps", "300", "--hidden", "8", "--train-size", "100", "--batch-size", "20",
         "--epochs", "3", "--diagnose-every", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "steps (T = 100 for 2 epochs, then T = 300)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["training_steps"] == 7  # each process's, as the optimiser's
    # each process: 50 sequences (3 batches of 20) in each of the first two epochs, then 17 (1 batch)
    assert [(d["epoch"], d["step"]) for d in metrics["gradient_flow"]] == [
        (1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6), (3, 7)]
