"""The model config, pre-norm blocks, layer patterns for hybrids, and the language model."""

from .block import Block
from .config import PRESETS, ModelConfig, hybrid_pattern
from .lm import LanguageModel

__all__ = ["Block", "LanguageModel", "ModelConfig", "PRESETS", "hybrid_pattern"]
