"""Inference engine: KV cache, sampling, batched generation, OpenAI-compatible server."""

from .engine import Completion, Engine, TokenLogprob
from .kv_cache import KVCache
from .sampling import SamplingParams

__all__ = ["Completion", "Engine", "KVCache", "SamplingParams", "TokenLogprob"]
