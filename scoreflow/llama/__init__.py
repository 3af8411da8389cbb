"""Hand-written Llama-family model, loader, GGUF converter and tokenizer."""

from .config import LlamaConfig
from .load import load_model
from .model import Transformer
from .registry import DEFAULT_MODEL
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["DEFAULT_MODEL", "LlamaConfig", "Tokenizer", "Transformer", "load_model", "load_tokenizer"]
