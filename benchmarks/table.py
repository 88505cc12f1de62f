"""Turn the JSON written by `rnnkit bench --json FILE` into the markdown tables of README.md.

    python benchmarks/table.py benchmarks/cpu-2core.json       # forward, and training without dx
    python benchmarks/table.py --dx benchmarks/cpu-2core.json  # training without and with dx
"""

from __future__ import annotations

import json
import sys


def dx_table(report: dict) -> None:  # type: ignore[type-arg]
    """Per cell and size: the fused engine's training step without and with the input's gradient."""
    rows = {(r["cell"], tuple(r["size"]), r["mode"]): r for r in report["rows"]}
    print("| cell | T, B, I, H | torch.nn ms | fused ms | torch / fused | torch.nn ms, dx | fused ms, dx "
          "| torch / fused, dx | fused GFLOP/s, dx |")
    print("|" + "---|" * 9)
    for (cell, size, mode), r in rows.items():
        dx = rows.get((cell, size, "forward+backward+dx"))
        if mode != "forward+backward" or dx is None or "fused" not in r["ms"]:
            continue
        print(f"| {cell} | {', '.join(map(str, size))} | {r['ms']['torch']:.3f} | {r['ms']['fused']:.3f} | "
              f"{r['ratio']['fused']:.2f}x | {dx['ms']['torch']:.3f} | {dx['ms']['fused']:.3f} | "
              f"**{dx['ratio']['fused']:.2f}x** | {dx['gflops']['fused']:.1f} |")


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    rows = report["rows"]
    engines = [e for e in ("fused", "native", "reference") if any(e in r["ms"] for r in rows)]
    print(f"torch {report['torch_version']}, {report['threads']} threads, {report['machine']}; "
          f"sgemm peak measured at the start: {report['sgemm_gflops']:.0f} GFLOP/s.\n")
    head = ["cell", "T, B, I, H", "pass", "torch.nn ms"]
    for e in engines:
        head += [f"{e} ms", f"torch / {e}"]
    head += ["torch GFLOP/s", "fused GFLOP/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if r["mode"] == "forward+backward+dx":  # the --dx table's
            continue
        cells = [r["cell"], ", ".join(str(v) for v in r["size"]), r["mode"], f"{r['ms']['torch']:.3f}"]
        for e in engines:
            if e in r["ms"]:
                cells += [f"{r['ms'][e]:.3f}", f"**{r['ratio'][e]:.2f}x**" if e == "fused" else f"{r['ratio'][e]:.2f}x"]
            else:
                cells += ["-", "-"]
        cells += [f"{r['gflops']['torch']:.1f}", f"{r['gflops'].get('fused', float('nan')):.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1] == "--dx":
        with open(sys.argv[2], encoding="utf-8") as f:
            dx_table(json.load(f))
    else:
        main(sys.argv[1])
