"""Qwen2.5-Coder-0.5B-Instruct converted by us vs transformers reading the same GGUF: logits,
greedy tokens (batched and alone), token ids, and the chat template vs its own jinja text.

Kept small for CI (2 prompts, 16 tokens); bench/bench_qwen_parity.py runs the full check
(5 prompts, 64 tokens) and its numbers are in bench/RESULTS.md."""

import json

import pytest
import torch

from scoreflow.engine import Engine, SamplingParams
from scoreflow.testing.texts import CONVERSATIONS, EXTRA_TEXTS, QWEN_PROMPTS, as_ids, corpus

jinja2 = pytest.importorskip("jinja2")
pytestmark = pytest.mark.slow

NEW_TOKENS = 16
def test_converted_config_matches_the_gguf(qwen_model_dir, qwen_tokenizer):
    cfg = json.loads((qwen_model_dir / "config.json").read_text())
    assert {k: cfg[k] for k in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                "num_key_value_heads", "vocab_size", "rope_theta", "tie_word_embeddings",
                                "bos_token_id", "eos_token_id")} == {
        "model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1e6, "tie_word_embeddings": False,
        "bos_token_id": 151643, "eos_token_id": 151645}
    assert qwen_tokenizer.eos_token_ids == (151645,) and qwen_tokenizer.token_to_id("<|im_end|>") == 151645


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_its_jinja(qwen_tokenizer, messages, gen):
    want = jinja2.Environment().from_string(qwen_tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=gen)
    got = qwen_tokenizer.apply_chat_template(messages, add_generation_prompt=gen)
    assert got == want
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    assert got.startswith(default) == (messages[0]["role"] != "system")


def test_token_ids_match_transformers(qwen_tokenizer, qwen_gguf_oracle):
    _, hf_tok = qwen_gguf_oracle
    texts = corpus() + EXTRA_TEXTS
    mismatches = [t for t in texts if qwen_tokenizer.encode(t) != hf_tok.encode(t, add_special_tokens=False)]
    assert not mismatches, f"{len(mismatches)} strings tokenise differently, e.g. {mismatches[:3]!r}"
    assert all(qwen_tokenizer.decode(qwen_tokenizer.encode(t)) == t for t in texts)
    for messages in QWEN_PROMPTS:
        assert as_ids(qwen_tokenizer, messages) == hf_tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.mark.parametrize("messages", QWEN_PROMPTS, ids=["code", "digits"])
def test_logits_match_transformers(qwen_model, qwen_tokenizer, qwen_gguf_oracle, messages):
    hf_model, _ = qwen_gguf_oracle
    x = torch.tensor([as_ids(qwen_tokenizer, messages)])
    with torch.inference_mode():
        ours, theirs = qwen_model(x), hf_model(x).logits
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4


def test_greedy_matches_transformers_batched_and_alone(qwen_model, qwen_tokenizer, qwen_gguf_oracle):
    hf_model, _ = qwen_gguf_oracle
    prompts = [as_ids(qwen_tokenizer, m) for m in QWEN_PROMPTS]
    want = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            y = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                                  min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=151643)
            want.append(y[0, len(ids):].tolist())
    engine = Engine(qwen_model, qwen_tokenizer, max_batch=2, max_seq_len=256)
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    assert [c.token_ids for c in engine.generate(prompts, params)] == want
    assert [engine.generate([ids], params)[0].token_ids for ids in prompts] == want
