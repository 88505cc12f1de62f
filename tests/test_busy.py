"""A busy machine: the command line makes waiting threads sleep when other processes keep the
cores busy at launch (rnnkit._busy.prepare_launch), and says so; the CPU pressure is read as
Linux writes it, and nothing breaks where it cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit import _busy


@pytest.mark.parametrize(("argv", "orig", "expected"), [
    (["/venv/bin/rnnkit", "train"], None, True),
    (["-m", "train"], ["python", "-m", "rnnkit", "train"], True),
    (["/src/rnnkit/__main__.py", "train"], ["python", "-m", "rnnkit", "train"], True),
    (["-m", "pytest"], ["python", "-m", "pytest"], False),
    (["script.py"], None, False),
    (["-c"], ["python", "-c", "import rnnkit"], False),
    ([], None, False),
])
def test_the_command_line_is_told_from_other_programs(argv: list[str], orig: list[str] | None,
                                                      expected: bool) -> None:
    assert _busy.launched_as_cli(argv, orig or argv) is expected


def _stat(tmp_path: Path, running: int, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  1 2 3 4\nctxt 99\nprocs_running {running}\nprocs_blocked 0\n")
    monkeypatch.setattr(_busy, "STAT_FILE", str(stat))
    monkeypatch.setattr(_busy, "cores", lambda: 2)
    monkeypatch.setattr(_busy, "LAUNCH_SEEN", None)


@pytest.mark.parametrize(("running", "env", "expected"), [
    (1, {}, False),  # only this process: 2 threads on 2 cores
    (2, {}, True),  # one other task: 3 runnable threads on 2 cores
    (4, {}, True),
    (4, {"OMP_NUM_THREADS": "1"}, False),  # one thread waits for nobody
    (2, {"OMP_NUM_THREADS": "2"}, True),
    (4, {"OMP_WAIT_POLICY": "ACTIVE"}, False),  # the user's choice stands
    (4, {"GOMP_SPINCOUNT": "1000"}, False),
    (4, {"RNNKIT_ADAPTIVE_THREADS": "0"}, False),
])
def test_the_launch_sets_a_passive_wait_on_a_busy_machine(running: int, env: dict[str, str], expected: bool,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stat(tmp_path, running, monkeypatch)
    environ = dict(env)
    done = _busy.prepare_launch(["rnnkit", "train"], ["rnnkit", "train"], environ, torch_loaded=False)
    assert done is expected and (_busy.LAUNCH_SEEN is not None) is expected
    assert environ.get("OMP_WAIT_POLICY") == ("PASSIVE" if expected else env.get("OMP_WAIT_POLICY"))
    if expected:
        assert _busy.LAUNCH_SEEN == (running - 1, 2)
        assert "on 2 cores at launch" in (_busy.advice(2) or "")


def test_the_launch_changes_nothing_outside_the_command_line_or_after_torch(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _stat(tmp_path, 6, monkeypatch)
    environ: dict[str, str] = {}
    assert not _busy.prepare_launch(["train.py"], ["python", "train.py"], environ, torch_loaded=False)
    assert not _busy.prepare_launch(["rnnkit"], ["rnnkit"], environ, torch_loaded=True)  # its threads are set up
    monkeypatch.setattr(_busy, "STAT_FILE", str(tmp_path / "missing"))  # not Linux
    assert not _busy.prepare_launch(["rnnkit"], ["rnnkit"], environ, torch_loaded=False)
    assert environ == {} and _busy.LAUNCH_SEEN is None


def test_cpu_pressure_is_read_as_linux_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=63.20 avg60=40.00 avg300=12.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    monkeypatch.setattr(_busy, "PRESSURE_FILE", str(psi))
    monkeypatch.setattr(_busy, "_pressure_read", [-float("inf"), 0.0])
    monkeypatch.setattr(_busy, "LAUNCH_SEEN", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert _busy.cpu_pressure() == 63.2 and _busy.machine_busy()
    assert "CPU pressure 63%" in (_busy.advice(2) or "") and _busy.advice(1) is None
    psi.write_text("some avg10=2.50 avg60=40.00 avg300=12.00 total=123\n")
    assert _busy.cpu_pressure() == 63.2  # the last reading holds for PRESSURE_EVERY_S
    monkeypatch.setattr(_busy, "PRESSURE_EVERY_S", 0.0)
    assert _busy.cpu_pressure() == 2.5 and not _busy.machine_busy() and _busy.advice(2) is None
    psi.write_text("garbage\n")
    assert _busy.cpu_pressure() == 0.0
    psi.write_text("some avg10=99.00 avg60=0.00 avg300=0.00 total=1\n")
    assert _busy.cpu_pressure() == 0.0  # given up on: never read again


@pytest.mark.end_to_end  # real processes beside busy ones, about 6 s: CI runs it
@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_a_real_launch_beside_busy_processes_sets_a_passive_wait() -> None:
    """A real process that starts as the command line would (sys.argv ['rnnkit', ...]) beside
    more busy processes than cores: importing rnnkit, before torch, sets OMP_WAIT_POLICY."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(_busy.cores() + 1)]
    try:
        code = ("import sys; sys.argv = ['rnnkit', 'train']; sys.orig_argv = sys.argv\n"
                "import rnnkit, os, torch; print(os.environ.get('OMP_WAIT_POLICY'), rnnkit._busy.LAUNCH_SEEN)")
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RNNKIT_ADAPTIVE_THREADS", "OMP_NUM_THREADS")}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stderr
    policy, seen = done.stdout.split(maxsplit=1)
    assert policy == "PASSIVE", done.stdout
    assert seen.startswith("(") and int(seen.strip("()").split(",")[0]) >= _busy.cores()
