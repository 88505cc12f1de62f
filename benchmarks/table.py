"""Turn the JSON written by `rnnkit bench --json FILE` into the markdown table of README.md.

    python benchmarks/table.py benchmarks/cpu-2core.json
"""

from __future__ import annotations

import json
import sys


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
        cells = [r["cell"], ", ".join(str(v) for v in r["size"]), r["mode"], f"{r['ms']['torch']:.3f}"]
        for e in engines:
            if e in r["ms"]:
                cells += [f"{r['ms'][e]:.3f}", f"**{r['ratio'][e]:.2f}x**" if e == "fused" else f"{r['ratio'][e]:.2f}x"]
            else:
                cells += ["-", "-"]
        cells += [f"{r['gflops']['torch']:.1f}", f"{r['gflops'].get('fused', float('nan')):.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
