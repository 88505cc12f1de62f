"""Run folders appear whole or not at all, and are recognised when read back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnkit.runs import NotARunError, finish_run, partial_path, read_run, resume_run, start_run


def write_run(path, **files):  # type: ignore[no-untyped-def]
    start_run(path, config=files["config"])
    return finish_run(path, **files)


def test_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = {"w": torch.randn(3, 4), "b": torch.arange(3.0)}
    path = write_run(tmp_path / "run", config={"task": "x"}, weights=weights, extras={"labels": ["a"]},
                     metrics={"test": {"accuracy": 1.0}}, history=[{"epoch": 1, "loss": 0.5}])
    run = read_run(path)
    assert run.config == {"task": "x"} and run.extras == {"labels": ["a"]}
    assert torch.equal(run.weights["w"], weights["w"]) and torch.equal(run.weights["b"], weights["b"])
    assert (path / "history.csv").read_text().splitlines() == ["epoch,loss", "1,0.5"]
    with pytest.raises(FileExistsError, match="already exists"):
        write_run(path, config={}, weights=weights, extras={}, metrics={}, history=[])


def test_a_failed_write_leaves_no_run_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only RUN.partial, the working folder that --resume continues, and never a half-written RUN."""
    with pytest.raises(TypeError):
        write_run(tmp_path / "run", config={"task": "x"}, weights={"w": torch.ones(2)},
                  extras={"not json": object()}, metrics={}, history=[])
    assert [p.name for p in tmp_path.iterdir()] == ["run.partial"]
    assert partial_path(tmp_path / "run") == tmp_path / "run.partial"
    with pytest.raises(NotARunError, match="died before its first epoch ended"):
        resume_run(tmp_path / "run")
    start_run(tmp_path / "run", config={"again": 1})  # no checkpoint in it: nothing to keep, replaced
    (tmp_path / "run.partial" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="an unfinished run is at"):  # one with a checkpoint is kept
        start_run(tmp_path / "run", config={})


def test_not_a_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotARunError, match="is not a folder"):
        read_run(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotARunError, match="is not an rnnkit run folder: it has no model.safetensors, extras.json"):
        read_run(tmp_path)


def test_one_process_owns_a_run(tmp_path: Path) -> None:
    """While another process (a real one) holds a run, training into it is refused with that
    process's PID and touches nothing; once the holder is gone (killed: the OS drops its lock), the
    run trains, and its lock file goes when it is finished."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from rnnkit.cli import main
    from rnnkit.runs import lock_path, partial_path

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rnnkit.runs import lock_run; lock_run(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    args = ["train", "forecast", "--window", "12", "--hidden", "8", "--epochs", "1", "--out", str(out)]
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert f"run folder {out} is in use by process {holder.pid}" in result.output
        assert not out.exists() and not partial_path(out).exists()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file() and not lock_path(out).exists()
