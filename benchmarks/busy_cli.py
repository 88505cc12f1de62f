"""`rnnkit train classify --dataset digits` on an idle machine and beside busy processes: the
training time of the whole run (as it prints it) and its test accuracy, for the command as it
ships and with the settings a user can choose.

    python benchmarks/busy_cli.py [--load 2] [--command "rnnkit train classify --dataset digits"]

Runs, one after another, each in a fresh process:
  idle                          the command as it ships, nothing else running
  idle, OMP_WAIT_POLICY=PASSIVE waiting threads sleep (what the launch sets on a busy machine)
  loaded, spinning              beside --load busy processes, RNNKIT_ADAPTIVE_THREADS=0: threads
                                spin while they wait (libgomp's default; rnnkit before it looked)
  loaded                        beside them, the command as it ships (it sees the load at launch
                                and sets OMP_WAIT_POLICY=PASSIVE)
  loaded, OMP_NUM_THREADS=1     beside them, one thread

The fair share beside N busy processes of a run that keeps k threads busy on C cores is
(N + k) / C times its idle time.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from rnnkit import _busy
from rnnkit.bench import background_load

VARIANTS = (("idle", 0, {}), ("idle, OMP_WAIT_POLICY=PASSIVE", 0, {"OMP_WAIT_POLICY": "PASSIVE"}),
            ("loaded, spinning", None, {"RNNKIT_ADAPTIVE_THREADS": "0"}), ("loaded", None, {}),
            ("loaded, OMP_NUM_THREADS=1", None, {"OMP_NUM_THREADS": "1"}))
FINAL = re.compile(r"test (\w+) ([\d.]+).*best epoch (\d+), ([\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=2)
    parser.add_argument("--command", default="rnnkit train classify --dataset digits")
    args = parser.parse_args()
    rnnkit = os.path.join(os.path.dirname(sys.executable), "rnnkit")
    command = shlex.split(args.command)
    command[0] = rnnkit if command[0] == "rnnkit" else command[0]
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "RNNKIT_ADAPTIVE_THREADS")}
    print(f"$ {args.command}   ({_busy.cores()} cores; loaded: beside {args.load} busy processes; "
          f"fair share {(args.load + _busy.cores()) / _busy.cores():.1f}x idle)")
    for name, load, env in VARIANTS:
        with tempfile.TemporaryDirectory() as folder, background_load(args.load if load is None else load):
            begin = time.perf_counter()
            done = subprocess.run([*command, "--out", os.path.join(folder, "run")], capture_output=True, text=True,
                                  env={**base, **env}, cwd=folder)
            wall = time.perf_counter() - begin
        found = FINAL.search(done.stdout)
        if done.returncode != 0 or found is None:
            sys.exit(f"{name}: failed ({done.returncode})\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        said = [line for line in done.stderr.splitlines() if "OMP_WAIT_POLICY" in line]
        print(f"{name:30} training {float(found[4]):6.1f} s (process {wall:5.1f} s)  test {found[1]} {found[2]}, "
              f"best epoch {found[3]}" + (f"\n{'':30} stderr: {said[0]}" if said else ""), flush=True)


if __name__ == "__main__":
    main()
