"""The embedded default model (SmolLM2-135M-Instruct, from its GGUF) vs transformers reading the
same GGUF file: logits, and our KV cache vs full recomputation."""

import pytest
import torch

from scoreflow.engine.kv_cache import KVCache
from scoreflow.testing.texts import DEFAULT_MODEL_PROMPTS, as_ids


@pytest.mark.slow
@pytest.mark.parametrize("prompt", DEFAULT_MODEL_PROMPTS, ids=["chat", "code", "digits", "unicode", "system"])
def test_logits_match_transformers(default_model, default_tokenizer, hf_gguf_oracle, prompt):
    hf_model, _ = hf_gguf_oracle
    ids = as_ids(default_tokenizer, prompt)
    x = torch.tensor([ids])
    with torch.inference_mode():
        ours, theirs = default_model(x), hf_model(x).logits
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4
    # greedy continuations (64 tokens, batched and alone) are checked in test_engine.py


@pytest.mark.slow
def test_cached_decode_equals_full_forward_with_left_padding(default_model, default_tokenizer):
    """Prefill a left-padded batch into the cache, decode 4 steps, compare with no-cache logits."""
    rows = [as_ids(default_tokenizer, p) for p in DEFAULT_MODEL_PROMPTS[:3]]
    T = max(map(len, rows))
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    cache = KVCache.for_model(default_model, batch=3, max_len=T + 4)
    with torch.inference_mode():
        logits = default_model(ids, attention_mask=mask, cache=cache)
        for _ in range(4):
            nxt = logits[:, -1:].argmax(-1)  # (B, 1)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            logits = default_model(nxt, cache=cache)
            full = default_model(ids, attention_mask=mask)[:, -1]
            torch.testing.assert_close(logits[:, -1], full, rtol=1e-4, atol=1e-4)
