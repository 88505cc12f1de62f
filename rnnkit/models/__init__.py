"""Models: small heads built from rnnkit's layers, one per input/output shape."""

from rnnkit.models._n_to_one import NToOne, NToOneConfig

__all__ = ["NToOne", "NToOneConfig"]
