"""Data: bundled real data sets that load offline, their registries (`rnnkit datasets`), and
the user's own files."""

from rnnkit.data._datasets import DATASETS, DatasetInfo, SequenceData, digit_rows, load_dataset, read_feature_table
from rnnkit.data._series import SERIES, Series, SeriesInfo, load_series, read_series_csv
from rnnkit.data._text import TextData, Vocabulary, pad_batch, read_texts, tokenize

__all__ = ["DATASETS", "SERIES", "DatasetInfo", "SequenceData", "Series", "SeriesInfo", "TextData", "Vocabulary",
           "digit_rows",
           "load_dataset", "load_series", "pad_batch", "read_feature_table", "read_series_csv", "read_texts",
           "tokenize"]
