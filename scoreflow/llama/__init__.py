"""Hand-written Llama-family model, loader, GGUF converter and tokenizer (exports imported on
first use: scoreflow/lazy.py)."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("LlamaConfig",), "load": ("load_model",), "model": ("Transformer",), "registry": ("DEFAULT_MODEL",),
    "tokenizer": ("Tokenizer", "load_tokenizer")})
