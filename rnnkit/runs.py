"""Run folders: everything a trained model needs to be used again, in one folder.

A run folder holds config.json (what was trained and how), model.safetensors (the weights),
extras.json (label names and other task data), metrics.json ("test" and "baseline" metrics),
history.csv (one row per epoch) and plots/*.png. It is written into a temporary folder beside its final
place and renamed when complete, so a process that dies never leaves a half-written run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FILES = ("config.json", "model.safetensors", "extras.json", "metrics.json", "history.csv")


class NotARunError(ValueError):
    """The folder is not a complete rnnkit run folder."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    extras: dict[str, Any]
    metrics: dict[str, Any]


def write_run(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    extras: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    plots: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a run folder at path, which must not exist yet; all of it appears at once.
    plots: PNG images by file name, written into plots/."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"run folder {target} already exists: choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(dict(config), indent=1), encoding="utf-8")
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        (tmp / "extras.json").write_text(json.dumps(dict(extras), indent=1), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(dict(metrics), indent=1), encoding="utf-8")
        with open(tmp / "history.csv", "w", newline="", encoding="utf-8") as f:
            if history:
                writer = csv.DictWriter(f, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
        if plots:
            (tmp / "plots").mkdir()
            for name, png in plots.items():
                (tmp / "plots" / name).write_bytes(png)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a run folder; NotARunError names what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotARunError(f"{folder} is not a folder")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise NotARunError(f"{folder} is not an rnnkit run folder: it has no {', '.join(missing)}")
    read = lambda name: json.loads((folder / name).read_text(encoding="utf-8"))  # noqa: E731
    return Run(folder, read("config.json"), load_file(str(folder / "model.safetensors")),
               read("extras.json"), read("metrics.json"))
