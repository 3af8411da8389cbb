"""Our Transformer vs transformers.LlamaForCausalLM on tiny random checkpoints saved in HF format."""

import json

import pytest
import torch

from scoreflow.llama import LlamaConfig, load_model

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=12, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=256)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def save_tiny(tmp_path, **overrides):
    """A random HF Llama checkpoint (fp32 safetensors) written by transformers itself."""
    cfg = transformers.LlamaConfig(**{**BASE, **overrides})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so those paths are exercised
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("overrides", [
    dict(num_key_value_heads=12),                               # GQA ratio 1 (MHA)
    dict(num_key_value_heads=4),                                # ratio 3
    dict(num_key_value_heads=3, tie_word_embeddings=True),      # ratio 4, tied head
    dict(num_key_value_heads=4, attention_bias=True),           # q/k/v bias
    dict(num_key_value_heads=4, rope_scaling=LLAMA3),           # llama3 rope scaling
    dict(num_key_value_heads=6, head_dim=8),                    # head_dim != hidden / heads
], ids=["gqa1", "gqa3", "gqa4-tied", "bias", "llama3-rope", "head-dim"])
def test_logits_match_transformers(tmp_path, overrides):
    hf = save_tiny(tmp_path, **overrides)
    ours = load_model(tmp_path, device="cpu")
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, BASE["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_diff(ours(ids), hf(ids).logits) < 1e-5


def test_left_padded_batch_matches_transformers(tmp_path):
    hf = save_tiny(tmp_path, num_key_value_heads=4)
    ours = load_model(tmp_path, device="cpu")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, BASE["vocab_size"], (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :13] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = hf(ids, attention_mask=mask, position_ids=positions).logits
        assert rel_diff(a[mask.bool()], b[mask.bool()]) < 1e-5
        # and every padded row equals that row run alone, unpadded
        for row in range(3):
            alone = ours(ids[row: row + 1, mask[row].bool()])
            assert rel_diff(a[row, mask[row].bool()], alone[0]) < 1e-5


def test_config_forms(tmp_path):
    """Classic rope_scaling and the newer rope_parameters give the same config."""
    classic = LlamaConfig.from_dict({**BASE, "rope_scaling": LLAMA3, "eos_token_id": [1, 2]})
    newer = LlamaConfig.from_dict({**BASE, "rope_parameters": {**LLAMA3, "rope_theta": 10000.0},
                                   "eos_token_id": [1, 2]})
    assert classic == newer and classic.rope_scaling.factor == 8.0 and classic.eos_token_id == (1, 2)
    assert LlamaConfig.from_dict({**BASE, "eos_token_id": 7}).eos_token_id == (7,)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        LlamaConfig.from_dict({**BASE, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        LlamaConfig.from_dict({**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.warns(UserWarning, match="unknown config keys.*frobnicate"):
        LlamaConfig.from_dict({**BASE, "frobnicate": 1})
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    assert LlamaConfig.from_json(tmp_path).head_dim == 4
