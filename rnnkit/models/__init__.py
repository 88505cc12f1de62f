"""Models: small heads built from rnnkit's layers, one per input/output shape."""

from rnnkit.models._classifier import ClassifierConfig, SequenceClassifier

__all__ = ["ClassifierConfig", "SequenceClassifier"]
