"""LoRA layers, merge/disable, and PEFT adapter-format parity on tiny random HF checkpoints."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scoreflow.llama import load_model
from scoreflow.lora import (LoRAConfig, LoRALinear, apply_lora, disable_adapter, load_adapter,
                            merge_lora, save_adapter, unmerge_lora)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=128)
IDS = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


def save_tiny(path, **overrides) -> "transformers.LlamaForCausalLM":
    """A random fp32 HF Llama checkpoint written by transformers into `path`."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **overrides})).eval()
    hf.save_pretrained(path, safe_serialization=True)
    return hf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    save_tiny(path)
    return path


def hf_model(path):
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def lora_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def randomise(model, seed=3):
    """Training-like, non-zero A and B (ours or PEFT's)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def logits(model):
    with torch.no_grad():
        out = model(IDS)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_fresh_adapter_equals_base(ckpt):
    model = load_model(ckpt, device="cpu")
    base = logits(model)
    assert apply_lora(model) is model
    layers = lora_layers(model)
    assert sorted(layers) == [f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"]
    v = layers["layers.0.self_attn.v_proj"]
    assert v.lora_A.shape == (8, 48) and v.lora_B.shape == (16, 8) and v.scaling == 2.0
    assert not v.training and v.lora_A.abs().sum() > 0 and not v.lora_B.any()
    assert model.lora_config == LoRAConfig(r=8, alpha=16, dropout=0.01,
                                           targets=("q_proj", "v_proj"))
    assert torch.equal(logits(model), base)


def test_merge_matches_adapter_and_unmerge_restores(ckpt):
    model = load_model(ckpt, device="cpu")
    base = logits(model)
    apply_lora(model, r=4, alpha=8, targets=("q_proj", "v_proj", "o_proj", "down_proj"))
    weights = {n: m.base_layer.weight.clone() for n, m in lora_layers(model).items()}
    randomise(model)
    adapted = logits(model)
    assert not torch.allclose(adapted, base, rtol=1e-3, atol=1e-3)  # the adapter does something
    merge_lora(model)
    assert all(m.merged for m in lora_layers(model).values())
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for name, m in lora_layers(model).items():
        assert not m.merged
        torch.testing.assert_close(m.base_layer.weight, weights[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-6)


def test_disable_adapter_is_exact_base(ckpt):
    model = load_model(ckpt, device="cpu")
    base = logits(model)
    apply_lora(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # training-like changes to A and B
        opt.zero_grad()
        model(IDS)[:, :-1].logsumexp(-1).sum().backward()
        opt.step()
    assert any(m.lora_B.any() for m in lora_layers(model).values())
    adapted = logits(model)
    assert not torch.equal(adapted, base)
    with disable_adapter(model):
        assert torch.equal(logits(model), base)
    assert torch.equal(logits(model), adapted)
    with pytest.raises(KeyError), disable_adapter(model):  # state comes back on exceptions too
        raise KeyError("boom")
    assert all(m.enabled for m in lora_layers(model).values())
    model.layers[1].self_attn.q_proj.enabled = False  # the previous per-layer state is restored
    with disable_adapter(model):
        assert torch.equal(logits(model), base)
    assert not model.layers[1].self_attn.q_proj.enabled and model.layers[0].self_attn.q_proj.enabled
    merge_lora(model.layers[0])
    with pytest.raises(RuntimeError, match="unmerge_lora"), disable_adapter(model):
        pass


def test_only_lora_params_train(ckpt):
    model = load_model(ckpt, device="cpu")
    apply_lora(model, targets=("q_proj", "k_proj", "gate_proj"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.{m}.lora_{ab}" for i in range(2) for ab in "AB"
                         for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj")}
    randomise(model)
    model(IDS).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_dropout_only_on_lora_branch():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=2, alpha=4, dropout=0.5)
    randomise(layer)
    x = torch.randn(3, 6)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    expected = base(x) + F.dropout(x, 0.5, training=True) @ layer.lora_A.T @ layer.lora_B.T * 2.0
    torch.testing.assert_close(out, expected)
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + x @ layer.lora_A.T @ layer.lora_B.T * 2.0)


def test_fp32_lora_over_bf16_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 8, bias=False).to(torch.bfloat16)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0, dtype=torch.float32)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert LoRALinear(base, r=4, alpha=8, dropout=0.0).lora_A.dtype == torch.bfloat16
    randomise(layer)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    layer.merge()
    assert base.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer(x), out, rtol=2e-2, atol=2e-2)  # bf16 rounding of W + ΔW


def test_peft_loads_our_adapter(ckpt, tmp_path):
    model = load_model(ckpt, device="cpu")
    apply_lora(model)
    randomise(model)
    out = save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(ckpt))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json",
                                                     "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert {k: cfg[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout",
                                "target_modules", "bias", "fan_in_fan_out", "inference_mode",
                                "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
        "lora_dropout": 0.01, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": str(ckpt)}
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == {f"base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.weight"
                    for i in range(2) for p in "qv" for ab in "AB"}
    theirs = peft.PeftModel.from_pretrained(hf_model(ckpt), str(out)).eval()
    ours = logits(model)
    assert not torch.allclose(ours, logits(hf_model(ckpt)), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours, logits(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=["k_proj", "o_proj", "up_proj", "down_proj"], use_rslora=True),
    dict(target_modules=r"model\.layers\.1\.self_attn\.(q|v)_proj"),  # regex form
], ids=["list", "rslora", "regex"])
def test_we_load_peft_adapter(ckpt, tmp_path, options):
    theirs = peft.get_peft_model(hf_model(ckpt), peft.LoraConfig(
        r=4, lora_alpha=12, lora_dropout=0.05, task_type="CAUSAL_LM", **options)).eval()
    randomise(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(load_model(ckpt, device="cpu"), tmp_path / "peft")
    n_peft = sum("lora_A" in n for n, _ in theirs.named_parameters())
    assert len(lora_layers(model)) == n_peft
    torch.testing.assert_close(logits(model), logits(theirs), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_save_is_atomic(ckpt, tmp_path, monkeypatch):
    model = load_model(ckpt, device="cpu")
    apply_lora(model)
    out = save_adapter(model, tmp_path / "adapter")
    first = load_file(out / "adapter_model.safetensors")
    randomise(model)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("scoreflow.lora.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp dir left behind
    for key, t in load_file(out / "adapter_model.safetensors").items():
        assert torch.equal(t, first[key])  # the previous adapter is untouched
    monkeypatch.undo()
    save_adapter(model, out)  # overwriting works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert torch.equal(load_file(out / "adapter_model.safetensors")[key],
                       model.layers[1].self_attn.v_proj.lora_B)


def test_apply_errors(ckpt, tmp_path):
    model = load_model(ckpt, device="cpu")
    with pytest.raises(ValueError, match=r"no module matches LoRA targets \('qproj',\).*"
                                         r"layers\.0\.self_attn\.q_proj"):
        apply_lora(model, targets=("qproj",))
    with pytest.raises(ValueError, match="only nn.Linear"):
        apply_lora(model, targets=("embed_tokens",))
    with pytest.raises(ValueError, match="r >= 1"):
        apply_lora(model, r=0)
    assert not lora_layers(model)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model)
    save_tiny(tmp_path, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="lm_head.*tied"):
        apply_lora(load_model(tmp_path, device="cpu"), targets=("lm_head",))


@pytest.fixture
def our_adapter(ckpt, tmp_path):
    model = load_model(ckpt, device="cpu")
    apply_lora(model)
    return save_adapter(model, tmp_path / "adapter")


def test_load_errors(ckpt, tmp_path, our_adapter):
    fresh = load_model(ckpt, device="cpu")
    with pytest.raises(FileNotFoundError, match=f"adapter_config.json in {tmp_path}"):
        load_adapter(fresh, tmp_path)
    weights = our_adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key] = torch.zeros(48, 6)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=rf"adapter_model.safetensors: {key} has shape \(48, 6\).*"
                                         r"needs \(48, 8\)"):
        load_adapter(fresh, our_adapter)
    assert not lora_layers(fresh)  # a failed load leaves the model untouched
    tensors[key] = torch.zeros(48, 8)
    tensors["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = torch.zeros(8, 48)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="do not select.*mlp.up_proj.lora_A"):
        load_adapter(fresh, our_adapter)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors in"):
        load_adapter(fresh, our_adapter)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "'bias': 'all'"),
    ({"layers_to_transform": [0]}, "layers_to_transform"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'"),
])
def test_unsupported_config(ckpt, our_adapter, change, message):
    path = our_adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=message):
        load_adapter(load_model(ckpt, device="cpu"), our_adapter)


def test_unknown_config_key_warns(ckpt, our_adapter):
    path = our_adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "frobnicate": 1}))
    with pytest.warns(UserWarning, match="unknown adapter config keys.*frobnicate"):
        model = load_adapter(load_model(ckpt, device="cpu"), our_adapter)
    assert len(lora_layers(model)) == 4
