"""Data: bundled real data sets that load offline, and their registry (`rnnkit datasets`)."""

from rnnkit.data._datasets import DATASETS, DatasetInfo, SequenceData, load_dataset

__all__ = ["DATASETS", "DatasetInfo", "SequenceData", "load_dataset"]
