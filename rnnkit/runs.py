"""Run folders: everything a trained model needs to be used again, in one folder.

A run folder holds config.json (what was trained and how), model.safetensors (the weights),
extras.json (label names and other task data), metrics.json ("test" and "baseline" metrics),
history.csv (one row per epoch), plots/*.png and checkpoint.pt (the training state, for --resume).

While training, a run lives in RUN.partial beside its final place: config.json and the checkpoint
of the last finished epoch. One process owns it meanwhile: it holds a lock on .RUN.lock (lock_run),
and another process that would train into the same folder is refused with the owner's PID. When training ends the remaining files are written there and the
folder is renamed to RUN, so a process that dies never leaves a half-written run folder, only a
RUN.partial that ``--resume RUN`` continues.
"""

from __future__ import annotations

import atexit
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors.torch import load_file, save

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

FILES = ("config.json", "model.safetensors", "extras.json", "metrics.json", "history.csv")


class NotARunError(ValueError):
    """The folder is not a complete rnnkit run folder."""


class RunInUseError(FileExistsError):
    """Another process is training into the same run folder."""


class DiskFullError(OSError):
    """A file could not be written for lack of space (or quota) on its device; nothing of it was
    left behind, and the file it would have replaced is as it was."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object] | bytes) -> None:
    """Write the file at path whole or not at all: into a temporary file beside it (flushed to the
    disk), then renamed over path. write: the bytes, or a function that writes to the open file.
    A full device is DiskFullError naming path and the free space; on any failure the temporary
    file goes and path keeps its old content."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if out_of_space(error):
            free = shutil.disk_usage(target.parent).free
            raise DiskFullError(f"cannot write {target}: no space left on the device that holds {target.parent} "
                                f"({free / 1e6:.1f} MB free)") from None
        raise


_HELD: dict[Path, int] = {}
"""The runs this process owns (lock_run): resolved path -> the lock file's descriptor."""


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of the run at path: .RUN.lock beside it."""
    target = Path(path)
    return target.with_name(f".{target.name}.lock")


def lock_run(path: str | os.PathLike[str]) -> None:
    """Make this process the only one that trains into the run at path, until release_run(path)
    or its end (the OS drops the lock of a process that dies): an exclusive lock on lock_path,
    which holds the owner's PID. RunInUseError names the process that holds it."""
    key = Path(path).resolve()
    if key in _HELD or fcntl is None:  # held already; or no POSIX locks (Windows): none taken
        return
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, or not writable
        reason = (f"{error.filename} is a file" if isinstance(error, FileExistsError)
                  else f"{error.strerror} ({error.filename})")
        raise ValueError(f"cannot create the run folder {path}: {reason}") from None
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunInUseError(f"run folder {path} is in use by process {owner} (it holds {lock}): wait for "
                                    "it to end, or choose another --out") from None
            if lock.exists() and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the owner before removed the file as this process opened it: again
    except (PermissionError, NotADirectoryError, FileNotFoundError, IsADirectoryError) as error:
        raise ValueError(f"cannot write the run folder {path}: {error.strerror} ({error.filename})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    if not _HELD:
        atexit.register(_release_all)  # a process that ends on an error leaves no lock file behind
    _HELD[key] = fd


def _release_all() -> None:
    """At exit: give up the runs still held. One that ended on an error before its first epoch
    ended leaves nothing: its RUN.partial holds only config.json, no checkpoint to resume."""
    for key in list(_HELD):
        work = partial_path(key)
        if work.is_dir() and not (work / CHECKPOINT).exists():
            shutil.rmtree(work, ignore_errors=True)
        release_run(key)


def release_run(path: str | os.PathLike[str]) -> None:
    """Give up the run at path (lock_run); its lock file goes."""
    fd = _HELD.pop(Path(path).resolve(), None)
    if fd is None:
        return
    try:
        os.unlink(lock_path(path))
    except FileNotFoundError:
        pass
    os.close(fd)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    extras: dict[str, Any]
    metrics: dict[str, Any]


CHECKPOINT = "checkpoint.pt"


def out_of_space(error: BaseException | None) -> bool:
    """Whether error, or one it arose from, is a full device or quota (torch.save, for one, raises
    a RuntimeError of its own while it handles the OSError)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where the run at path lives while it trains."""
    target = Path(path)
    return target.with_name(target.name + ".partial")


def run_name(path: str | os.PathLike[str]) -> Path:
    """The run that path names: RUN for the folder RUN.partial it trains in (so that a run resumed
    by the folder one sees on disk still ends in RUN), else path itself."""
    given = Path(path)
    if given.name.endswith(".partial") and given.is_dir() and given.name != ".partial":
        return given.with_name(given.name.removesuffix(".partial"))
    return given


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    write_atomically(path, json.dumps(dict(content), indent=1).encode("utf-8"))


def start_run(path: str | os.PathLike[str], *, config: Mapping[str, Any]) -> Path:
    """Create RUN.partial holding config.json for a new run at path; returns RUN.partial."""
    target, work = Path(path), partial_path(path)
    if target.exists():
        raise FileExistsError(f"run folder {target} already exists: choose another --out")
    if work.exists():
        if (work / CHECKPOINT).is_file():
            raise FileExistsError(f"an unfinished run is at {work}: continue it with --resume {target}, or delete it")
        shutil.rmtree(work)  # a run that died before its first epoch ended: nothing in it to keep
    work.mkdir(parents=True)
    _write_json(work / "config.json", config)
    return work


def resume_run(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The working folder and config.json of the run at path, to continue training it: RUN.partial
    if training stopped before the end, else a copy of the finished RUN (which stays intact until
    the continued run replaces it)."""
    target, work = Path(path), partial_path(path)
    if not work.is_dir():
        if not (target / CHECKPOINT).is_file():
            raise NotARunError(f"nothing to resume at {target}: neither a run folder with a {CHECKPOINT} "
                               f"nor an unfinished {work.name}")
        check_checkpoint(target / CHECKPOINT)  # before the copy: a damaged run is left as it is
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.copytree(target, tmp / "run")
        os.replace(tmp / "run", work)
        tmp.rmdir()
    if not (work / "config.json").is_file() or not (work / CHECKPOINT).is_file():
        raise NotARunError(f"{work} has no config.json or no {CHECKPOINT}: it died before its first epoch ended; "
                           "delete it and train again")
    check_checkpoint(work / CHECKPOINT)
    return work, read_json(work / "config.json")


def check_checkpoint(file: Path) -> None:
    """NotARunError unless file is a training checkpoint that loads (torch.load, weights only)."""
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NotARunError(f"cannot read {file} ({reason}): the checkpoint is damaged, so the run cannot continue "
                           "from it") from None
    if not isinstance(state, dict) or not {"model", "optimiser", "history"} <= set(state):
        raise NotARunError(f"{file} is not an rnnkit training checkpoint: the run cannot continue from it")


def finish_run(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    extras: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    plots: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the run's files into RUN.partial and rename it to RUN (replacing a finished RUN that
    was resumed). plots: PNG images by file name, written into plots/."""
    target, work = Path(path), partial_path(path)
    _fill(work, config=config, weights=weights, extras=extras, metrics=metrics, history=history, plots=plots)
    if target.exists():  # a finished run that was resumed: swap, then drop the old one
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "run")
        os.replace(work, target)
        shutil.rmtree(old)
    else:
        os.replace(work, target)
    release_run(path)
    return target


def _fill(
    folder: Path,
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    extras: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    plots: Mapping[str, bytes] | None,
) -> None:
    _write_json(folder / "config.json", config)
    write_atomically(folder / "model.safetensors", save({k: v.detach().cpu().contiguous() for k, v in weights.items()}))
    _write_json(folder / "extras.json", extras)
    _write_json(folder / "metrics.json", metrics)
    table = io.StringIO(newline="")
    if history:
        writer = csv.DictWriter(table, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    write_atomically(folder / "history.csv", table.getvalue().encode("utf-8"))
    if plots:
        (folder / "plots").mkdir(exist_ok=True)
        for name, png in plots.items():
            write_atomically(folder / "plots" / name, png)


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a run folder; NotARunError names what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotARunError(f"{folder} is not a folder")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise NotARunError(f"{folder} is not an rnnkit run folder: it has no {', '.join(missing)}")
    return Run(folder, read_json(folder / "config.json"), _read_weights(folder / "model.safetensors"),
               read_json(folder / "extras.json"), read_json(folder / "metrics.json"))


_DAMAGED = "the run folder is damaged: train it again, or restore the file from a copy"


def read_json(file: Path) -> dict[str, Any]:
    """A run's JSON file; NotARunError names the file if it cannot be read or is not a JSON object."""
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotARunError(f"{file.parent} is not an rnnkit run folder: it has no {file.name}") from None
    except (OSError, ValueError) as error:
        raise NotARunError(f"cannot read {file} ({error}): {_DAMAGED}") from None
    if not isinstance(content, dict):
        raise NotARunError(f"{file} does not hold a JSON object: {_DAMAGED}")
    return content


@contextmanager
def reading(file: Path) -> Iterator[None]:
    """Around code that builds objects from the values of a run's file (config.json, extras.json):
    a value that is missing, of the wrong type or out of range (KeyError, TypeError, ValueError,
    IndexError; RuntimeError from torch building a module of a wrong size) is NotARunError naming the
    file and the value. Code inside it reads run files only:
    the user's input is checked before it or after it."""
    try:
        yield
    except NotARunError:
        raise
    except KeyError as error:
        raise NotARunError(f"{file} has no value {error.args[0]!r}: {_DAMAGED}") from None
    except (TypeError, ValueError, IndexError, ArithmeticError, RuntimeError) as error:  # RuntimeError: torch's
        raise NotARunError(f"{file} has a wrong value ({error}): {_DAMAGED}") from None


def value(content: Any, key: str, kind: type | tuple[type, ...], *, minimum: float | None = None,
          choices: Sequence[Any] | None = None, within: str = "") -> Any:
    """content[key] (content a JSON object, itself the value within, e.g. "input") if it is of type
    kind (an int is a float; a bool is neither), at least minimum and among choices where given;
    else KeyError, TypeError or ValueError naming the key, for reading to report."""
    name = f"{within}.{key}" if within else key
    if not isinstance(content, dict):
        raise TypeError(f"{within or 'the file'} must be a JSON object, got {type(content).__name__}")
    if key not in content:
        raise KeyError(name)
    found = content[key]
    key = name
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if isinstance(found, bool) and bool not in kinds or not isinstance(found, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"{key} must be {names}, got {type(found).__name__} {found!r}")
    if minimum is not None and isinstance(found, (int, float)) and not found >= minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {found!r}")
    if choices is not None and found not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}, got {found!r}")
    return found


def numbers(content: Any, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """content[key], a nested list of finite numbers of the given shape, as float64 (for reading)."""
    found = value(content, key, list)
    try:
        array = np.asarray(found, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{key} must be a list of numbers") from None
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"{key} must be {shape} finite numbers, got shape {array.shape}")
    return array


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise NotARunError(f"cannot read {file} ({error}): {_DAMAGED}") from None


def load_weights(model: torch.nn.Module, run: Run) -> None:
    """Put the run's weights into model (built from the run's config.json); NotARunError if they do
    not fit it, as when model.safetensors was copied from another run."""
    try:
        model.load_state_dict(run.weights)
    except RuntimeError as error:
        lines = str(error).splitlines()  # torch: a heading, then one line per mismatch
        detail = lines[1].strip() if len(lines) > 1 else str(error)
        raise NotARunError(f"{run.path / 'model.safetensors'} does not fit the model that {run.path / 'config.json'} "
                           f"describes ({detail}): were the files copied from another run?") from None
