"""The memory plan's counts against the code they count: parameters, LoRA parameters and the KV
cache exactly (models built on the meta device, nothing allocated), and what one layer keeps
for the backward against torch's own saved-tensor hooks; `train --plan` from a bare
config.json, without weights, writing nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoreflow.engine.kv_cache import KVCache
from scoreflow.llama.config import LlamaConfig
from scoreflow.llama.model import Linear, MaskedPlan, Transformer, rope_cos_sin
from scoreflow.lora import apply_lora
from scoreflow.memory_plan import Shape, kv_cache, packed_pass, saved_per_token
from scoreflow.optimize.plan import largest, parse_budget

REPO = Path(__file__).resolve().parents[2]
SHAPES = {  # the embedded models' shapes and Llama-3.1-8B's (bench/shapes/)
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, attention_bias=True),
    "llama-3.1-8b": LlamaConfig.from_json(REPO / "bench/shapes/llama-3.1-8b").__dict__,
}
TINY = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8,
                   num_key_value_heads=2)


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_counts_are_the_models(name):
    cfg = LlamaConfig(**SHAPES[name])
    with torch.device("meta"):
        model = Transformer(cfg)
    shape = Shape.of(cfg)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())  # a tied head counted once
    assert shape.linear_parameters() == sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))
    apply_lora(model, r=8)
    assert shape.lora_parameters(8) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_kv_cache_bytes_are_the_caches():
    with torch.device("meta"):
        model = Transformer(TINY)
    cache = KVCache.for_model(model, batch=6, max_len=96)
    assert kv_cache(Shape.of(TINY), 6, 96, 4) == cache.k.nbytes + cache.v.nbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [24, 72])
def test_what_a_layer_keeps_for_the_backward(dtype, T):
    """One layer's training forward under saved_tensors_hooks: the tensors it saves (its input
    included, not the weights or the RoPE tables all layers share) are a T + G T^2 w, within 1%."""
    torch.manual_seed(0)
    model = apply_lora(Transformer(TINY).to(dtype), r=4, dropout=0.1, dtype=torch.float32).train()
    x = torch.randn(1, T, TINY.hidden_size, dtype=dtype, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(T)[None], model.inv_freq)
    cos, sin = cos.to(dtype), sin.to(dtype)
    known = {t.untyped_storage().data_ptr() for t in (cos, sin, *model.parameters())}
    saved = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in known:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.layers[0](x, cos, sin, MaskedPlan.causal(torch.ones(1, T, dtype=torch.bool)))
    shape, w = Shape.of(TINY), dtype.itemsize
    planned = T * saved_per_token(shape, 4, w) + shape.G * T * T * w
    assert sum(saved.values()) == pytest.approx(planned, rel=0.01)


def test_checkpointing_and_no_gradients_cost_less():
    s = Shape.of(LlamaConfig(**SHAPES["qwen2.5-0.5b"]))
    for T in (1000, 4000):
        ref, ckpt, full = (packed_pass(s, 1, T, T // 2, 8, 4, grad, ck) for grad, ck in
                           ((False, False), (True, True), (True, False)))
        assert ref < ckpt < full
    assert packed_pass(s, 2, 1000, 500, 8, 4, True, False) > packed_pass(s, 1, 1000, 500, 8, 4, True, False)


def test_budget_search_and_sizes():
    assert largest(lambda n: n * n <= 50, 1, 100) == 7
    assert largest(lambda n: n <= 100, 1, 100) == 100
    assert largest(lambda n: False, 1, 100) is None
    assert parse_budget("80GB") == parse_budget("80 GiB") == parse_budget("80") == 80 * 2**30
    with pytest.raises(Exception, match="not a size in GB"):
        parse_budget("80TB")


def test_plan_from_a_bare_config_writes_nothing(tmp_path):
    """Llama-3.1-8B's published shape, no weights and no tokenizer beside it."""
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text((REPO / "bench/shapes/llama-3.1-8b/config.json").read_text())
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "scoreflow.train", "--plan", "--generator", str(folder),
                           "--executor-url", "http://127.0.0.1:9/v1", "--device", "cuda", "--memory-budget", "24GB",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| Score-DPO step |" in proc.stdout and "What fits 24 GB" in proc.stdout
    assert "tokenizer" in proc.stdout.splitlines()[0]  # counted with the default generator's tokenizer
    assert not out.exists()


def test_evaluate_plans_its_generation_only():
    from scoreflow.evaluate import parse_args
    from scoreflow.optimize.plan import report

    cfg = parse_args(["--generator", str(REPO / "bench/shapes/llama-3.1-8b"), "--executor-url", "http://x/v1",
                      "--device", "cuda"])[0].run_config()
    rows = [line.split("|")[1].strip() for line in report(cfg, None, training=False).splitlines()[4:]]
    assert rows == ["generation"]
    remote = report(cfg.__class__(**{**cfg.__dict__, "generator_url": "http://y/v1"}), None, training=False)
    assert "none in this process" in remote
