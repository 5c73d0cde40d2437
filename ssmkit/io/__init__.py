"""Checkpoint formats (Hugging Face config.json + safetensors) and tokenizers."""

from .checkpoint import load_pretrained, save_pretrained
from .hf_config import SUPPORTED_MODEL_TYPES
from .tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["load_pretrained", "save_pretrained", "SUPPORTED_MODEL_TYPES", "ByteTokenizer", "load_tokenizer"]
