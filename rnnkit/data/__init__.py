"""Data: bundled real data sets that load offline, their registries (`rnnkit datasets`), and
the user's own files."""

from rnnkit.data._datasets import DATASETS, DatasetInfo, SequenceData, load_dataset
from rnnkit.data._series import SERIES, Series, SeriesInfo, load_series, read_series_csv

__all__ = ["DATASETS", "SERIES", "DatasetInfo", "SequenceData", "Series", "SeriesInfo", "load_dataset",
           "load_series", "read_series_csv"]
