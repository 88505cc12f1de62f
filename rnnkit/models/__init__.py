"""Models: small heads built from rnnkit's layers, one per input/output shape."""

from rnnkit.models._lm import LanguageModel, LanguageModelConfig, generate, sample_next
from rnnkit.models._n_to_one import NToOne, NToOneConfig

__all__ = ["LanguageModel", "LanguageModelConfig", "NToOne", "NToOneConfig", "generate", "sample_next"]
