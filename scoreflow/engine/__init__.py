"""Inference engine: KV cache, sampling, batched generation, OpenAI-compatible server (exports
imported on first use: scoreflow/lazy.py)."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "engine": ("Completion", "Engine", "TokenLogprob"), "kv_cache": ("KVCache",), "sampling": ("SamplingParams",)})
