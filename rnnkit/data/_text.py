"""Text for classification: labelled texts from a CSV/TSV file, a folder of .txt files per label,
or a bundled set; tokenisation (characters or words) and a vocabulary built from training data.

Token ids: 0 is padding (``<pad>``), 1 stands for any token the vocabulary lacks (``<unk>``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from rnnkit._extras import needs_extras
from rnnkit.data._files import read_table, read_text

PAD, UNK = "<pad>", "<unk>"
TOKENS = ("char", "word")
_WORD = re.compile(r"\w+|[^\w\s]")
V = TypeVar("V", bound="Vocabulary")


def tokenize(text: str, tokens: str) -> list[str]:
    """char: every character (case kept); word: lower-cased words and single punctuation marks."""
    if tokens == "char":
        return list(text)
    if tokens == "word":
        return _WORD.findall(text.lower())
    raise ValueError(f"tokens must be one of {', '.join(TOKENS)}, got {tokens!r}")


@dataclass(frozen=True)
class TextData:
    """Labelled texts: texts[i] has label label_names[y[i]]; y (N,) int64."""

    texts: list[str]
    y: np.ndarray
    label_names: list[str]


class Vocabulary:
    """Token <-> id. Built from training texts only, so validation and test words it never saw map
    to ``<unk>`` as new text will."""

    def __init__(self, itos: Sequence[str], tokens: str) -> None:
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}, got {list(itos[:2])}")
        self.itos = list(itos)
        self.tokens = tokens
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], tokens: str, *, max_size: int | None = None, min_count: int = 1) -> Vocabulary:
        """The tokens of texts seen at least min_count times, most frequent first (ties in first-seen
        order), at most max_size of them besides <pad> and <unk>."""
        counts = Counter(t for text in texts for t in tokenize(text, tokens))
        kept = [t for t, n in counts.most_common(max_size) if n >= min_count]
        return cls([PAD, UNK, *kept], tokens)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(t, 1) for t in tokenize(text, self.tokens)]

    def unknown(self, text: str) -> list[str]:
        """The tokens of text that the vocabulary lacks, in order of first appearance."""
        return list(dict.fromkeys(t for t in tokenize(text, self.tokens) if t not in self.stoi))

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "itos": self.itos}

    @classmethod
    def from_json(cls: type[V], data: dict[str, Any]) -> V:
        """The vocabulary that to_json wrote; TypeError or ValueError for anything else."""
        if not isinstance(data, dict):
            raise TypeError(f"a vocabulary is a JSON object, got {type(data).__name__}")
        itos, tokens = data.get("itos"), data.get("tokens")
        if not isinstance(itos, list) or not all(isinstance(s, str) for s in itos):
            raise TypeError("a vocabulary's itos is a list of strings")
        if len(set(itos)) != len(itos):
            raise ValueError("a vocabulary's itos repeats a token")
        if tokens not in TOKENS:
            raise ValueError(f"a vocabulary's tokens is one of {', '.join(TOKENS)}, got {tokens!r}")
        return cls(itos, tokens)


def pad_batch(ids: Sequence[Sequence[int]], *, max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Token ids of B texts -> (tokens (B, T) int64 padded with 0, lengths (B,) int64).
    A text longer than max_length keeps its first max_length tokens; an empty text keeps one
    <unk> so that every sequence has a step."""
    cut = [list(s[:max_length]) if max_length else list(s) for s in ids]
    cut = [s if s else [1] for s in cut]
    lengths = torch.tensor([len(s) for s in cut], dtype=torch.int64)
    out = torch.zeros(len(cut), int(lengths.max()), dtype=torch.int64)
    for row, s in enumerate(cut):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.int64)
    return out, lengths


def _labelled(texts: list[str], labels: list[str], where: str) -> TextData:
    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError(f"{where} has {len(names)} label{'s' if len(names) != 1 else ''} ({', '.join(names)}): "
                         "a classifier needs at least 2")
    index = {n: i for i, n in enumerate(names)}
    return TextData(texts, np.array([index[v] for v in labels], dtype=np.int64), names)


@needs_extras
def read_text_table(path: str | Path, text_col: str, label_col: str, *, encoding: str | None = None,
                    delimiter: str | None = None) -> TextData:
    """Texts and labels from a CSV or TSV file with a header row (encoding and delimiter as
    rnnkit.data._files.read_table takes them: sniffed by default). A row with an empty text or
    label is an error that names its line."""
    path = Path(path)
    table = read_table(path, encoding=encoding, delimiter=delimiter)
    missing = [c for c in (text_col, label_col) if c not in table.columns]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
                         f"{', '.join(map(repr, table.columns))}")
    for col in (text_col, label_col):
        empty = np.flatnonzero(table[col].str.strip() == "")
        if len(empty):
            lines = ", ".join(str(i + 2) for i in empty[:5])  # line 1 is the header
            raise ValueError(f"{path}: empty {col!r} on line {lines}{' and more' if len(empty) > 5 else ''}")
    return _labelled(table[text_col].tolist(), table[label_col].str.strip().tolist(), str(path))


@needs_extras
def read_text_folder(path: str | Path, *, encoding: str | None = None) -> TextData:
    """Texts from a folder with one sub-folder of .txt files per label (the layout of the IMDB
    review set: train/pos/*.txt, train/neg/*.txt), each read in encoding (None: UTF-8, with or
    without a byte-order mark)."""
    root = Path(path)
    texts, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            texts.append(read_text(file, encoding=encoding))
            labels.append(folder.name)
    if not texts:
        raise ValueError(f"{root} holds no <label>/*.txt files: expected one sub-folder of .txt files per label")
    return _labelled(texts, labels, str(root))


@needs_extras
def read_texts(path: str | Path, *, text_col: str | None, label_col: str | None, encoding: str | None = None,
               delimiter: str | None = None) -> TextData:
    """A folder (one sub-folder per label) or a CSV/TSV file (needs text_col and label_col)."""
    path = Path(path)
    if path.is_dir():
        return read_text_folder(path, encoding=encoding)
    if not text_col or not label_col:
        raise ValueError(f"{path} is a file: name its columns with --text-col and --label-col")
    return read_text_table(path, text_col, label_col, encoding=encoding, delimiter=delimiter)


# Surnames by language, from the person providers of the faker package: the classic "which
# language is this name" task of character-level RNN tutorials. A name listed by more than one of
# these locales is left out, as its label would be ambiguous.
SURNAME_LOCALES = {
    "Croatian": "hr_HR", "Dutch": "nl_NL", "English": "en_GB", "Finnish": "fi_FI", "French": "fr_FR",
    "German": "de_DE", "Italian": "it_IT", "Slovak": "sk_SK", "Spanish": "es_ES",
}


def surnames() -> TextData:
    import importlib

    found: dict[str, set[str]] = {}
    for language, locale in SURNAME_LOCALES.items():
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        names: set[str] = set()
        for attribute in ("last_names", "last_names_male", "last_names_female"):
            names |= set(getattr(provider, attribute, ()))
        found[language] = names
    count = Counter(n for names in found.values() for n in names)
    texts, labels = [], []
    for language in sorted(found):
        for name in sorted(found[language]):
            if count[name] == 1:
                texts.append(name)
                labels.append(language)
    return _labelled(texts, labels, "surnames")
