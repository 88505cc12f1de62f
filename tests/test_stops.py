"""`rnnkit train` stopped as machines stop it, in real processes: SIGTERM mid-training (what
schedulers and `docker stop` send) saves the state, says how to continue and exits 143; the resumed
run (named by the RUN.partial folder one sees on disk) ends in RUN with the numbers of a run that
never stopped; a full device is one line that says what is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from rnnkit.cli import main

TRAIN = ["train", "forecast", "--hidden", "8", "--window", "12", "--epochs", "3"]

STOPPED_AT_STEP_5 = """
import os, signal, sys, torch
step, calls = torch.optim.Adam.step, [0]
def counted(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, during the fifth step
    return step(self, *args, **kwargs)
torch.optim.Adam.step = counted
from rnnkit.cli import main
main(sys.argv[1:])
"""


@pytest.mark.end_to_end  # a real training process stopped and resumed, about 7 s: CI runs it
def test_sigterm_saves_says_how_to_continue_and_the_resumed_run_ends_in_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "st"
    done = subprocess.run([sys.executable, "-c", STOPPED_AT_STEP_5, *TRAIN, "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 143, done.stderr
    assert done.stderr.splitlines()[-3:] == [
        "SIGTERM: stopping after this step (once more to stop at once)",
        f"training stopped by SIGTERM in epoch 1, after batch 5 of 7; its state is saved in {out}.partial/checkpoint.pt",
        f"continue with: rnnkit train forecast --resume {out}"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["st.partial"]  # no lock file left
    assert sorted(p.name for p in (tmp_path / "st.partial").iterdir()) == ["checkpoint.pt", "config.json"]

    resumed = CliRunner().invoke(main, ["train", "forecast", "--resume", f"{out}.partial"])  # the folder one sees
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.splitlines()[-1] == f"run folder: {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]

    whole = CliRunner().invoke(main, [*TRAIN, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a), "the resumed run's weights differ from a run that never stopped"
    history = lambda run: [line.split(",")[:4] for line in (run / "history.csv").read_text().splitlines()]  # noqa: E731
    assert history(out) == history(tmp_path / "whole")  # epoch, train loss, val loss, val metric


# A wait policy chosen by the user: the command line then says nothing about a busy machine (rnnkit/_busy.py), so
# stderr holds only what the test is about, also when other processes load the cores.
QUIET_ON_A_BUSY_MACHINE = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def _in_a_small_device(tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    """command run with a 400 KB tmpfs mounted on tmp_path/dev (a mount namespace of its own)."""
    (tmp_path / "dev").mkdir()
    script = f"mount -t tmpfs -o size=400k tmpfs {tmp_path / 'dev'} || exit 99\n{command}\n"
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                              env=QUIET_ON_A_BUSY_MACHINE)
    except FileNotFoundError:
        pytest.skip("no unshare to mount a small device with")
    if done.returncode == 99 or "unshare:" in done.stderr:
        pytest.skip(f"cannot mount a small device here: {done.stderr.strip()}")
    return done


def test_a_full_device_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "dev" / "fc"
    done = _in_a_small_device(tmp_path, f"{sys.executable} -m rnnkit train forecast --hidden 64 --epochs 5 "
                                        f"--out {run}; echo \"status $?\"; ls -A {run}.partial")
    lines = done.stdout.splitlines()
    assert lines[-3:] == ["status 1", "checkpoint.pt", "config.json"], done  # no temporary file left
    [error] = done.stderr.splitlines()
    assert error.startswith(f"Error: cannot write {run}.partial/checkpoint.pt: no space left on the device that "
                            f"holds {run}.partial (")
    assert error.endswith("MB free); the checkpoint saved after epoch 1 is kept; free some space, then continue "
                          f"with: rnnkit train forecast --resume {run}")
