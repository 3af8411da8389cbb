"""Prepacked weights (scoreflow/kernels/linear.py, llama.model.Linear and SiblingProjections): the same
product as F.linear, used only where meant (inference mode), and never stale after an in-place
change; q/k/v and gate/up share one stacked copy while none of them is wrapped by LoRA."""

import pytest
import torch
import torch.nn.functional as F

from scoreflow.kernels.linear import PackedWeight, packed_linear
from scoreflow.llama.config import LlamaConfig
from scoreflow.llama.model import Linear, SiblingProjections, Transformer
from scoreflow.lora import apply_lora

# Qwen2's layout: biases on q/k/v only, and GQA (k/v narrower than q).
TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, attention_bias=True, attention_out_bias=False)


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (8, 64), (2, 5, 64), (40, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_float64(shape, bias):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g) if bias else None
    x = torch.randn(shape, generator=g)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(packed_linear(x, PackedWeight.of(w), b).double(), want, rtol=1e-5, atol=1e-5)


def test_stacked_copy_is_the_product_with_the_stacked_weights():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(out, 64, generator=g) for out in (96, 32, 32)]
    b, x = torch.randn(160, generator=g), torch.randn(5, 64, generator=g)
    want = F.linear(x.double(), torch.cat(ws).double(), b.double())
    torch.testing.assert_close(packed_linear(x, PackedWeight.of(*ws), b).double(), want, rtol=1e-5, atol=1e-5)


def _with_foreign_copy(layer: Linear) -> torch.Tensor:
    """Give `layer` a packed copy of another weight (at the current version) and return that
    weight, so an output tells which path computed it."""
    other = torch.randn_like(layer.weight)
    layer.packed = PackedWeight((layer.weight,), ((layer.weight.data_ptr(), layer.weight._version),),
                                PackedWeight.of(other).copy)
    return other


def test_packed_copy_is_used_only_in_inference_mode():
    layer = Linear(16, 8, bias=False).requires_grad_(False)
    other = _with_foreign_copy(layer)
    rows, one = torch.randn(4, 16), torch.randn(1, 16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(rows), F.linear(rows, other))
        torch.testing.assert_close(layer(one), F.linear(one, other))
    with torch.no_grad():  # scoring and DPO's reference pass stay on the plain weight
        torch.testing.assert_close(layer(rows), F.linear(rows, layer.weight))


def test_an_in_place_change_repacks():
    layer = Linear(16, 8, bias=True).requires_grad_(False)
    layer.prepack()
    with torch.no_grad():
        layer.weight.add_(1.0)  # e.g. merging LoRA into the base weight
    x = torch.randn(4, 16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_a_replaced_weight_repacks():
    layer = Linear(16, 8, bias=False).requires_grad_(False)
    layer.prepack()
    layer.weight = torch.nn.Parameter(torch.randn(8, 16), requires_grad=False)  # same version, 0
    x = torch.randn(4, 16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_new_storage_repacks():
    layer = Linear(16, 8, bias=False).requires_grad_(False)
    layer.prepack()
    layer.weight.data = torch.randn(8, 16)  # what Module.to(...) does
    x = torch.randn(4, 16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_training_goes_through_the_plain_weight():
    layer = Linear(16, 8)
    layer.prepack()
    layer(torch.randn(4, 16)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_no_copy_where_it_cannot_be_made_or_kept_current():
    assert PackedWeight.of(torch.ones(4, 4, dtype=torch.float64)) is None
    assert PackedWeight.of(torch.ones(4, 4, dtype=torch.bfloat16)) is None
    with torch.inference_mode():
        assert PackedWeight.of(torch.ones(4, 4)) is None


def _tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(TINY).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return model


def _inference_matches_plain(model: Transformer) -> None:
    """The inference forward (packed copies) against the no_grad one (F.linear throughout)."""
    ids = torch.randint(0, TINY.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
    with torch.inference_mode():
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_siblings_share_one_stacked_copy():
    model = _tiny()
    model.prepack()
    groups = [m for m in model.modules() if isinstance(m, SiblingProjections)]
    assert len(groups) == 2 * TINY.num_hidden_layers and all(g.packed is not None for g in groups)
    assert all(m.packed is None for g in groups for m in g.members())  # no second copy of their own
    assert all(layer.self_attn.o_proj.packed is not None and layer.mlp.down_proj.packed is not None
               for layer in model.layers)
    _inference_matches_plain(model)
    model.unpack()
    assert not any(getattr(m, "packed", None) for m in model.modules())


def test_fuse_false_packs_each_sibling_on_its_own():
    model = _tiny()
    model.prepack()
    model.prepack(fuse=False)  # e.g. to measure what stacking gains (bench/experiments/fused_projections.py)
    groups = [m for m in model.modules() if isinstance(m, SiblingProjections)]
    assert all(g.packed is None and all(m.packed is not None for m in g.members()) for g in groups)
    _inference_matches_plain(model)


def test_stacked_copy_is_never_stale():
    model = _tiny()
    model.prepack()
    with torch.no_grad():
        model.layers[0].self_attn.k_proj.weight.mul_(2.0)  # in place: a new version of one sibling
    model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.randn(48, 32), requires_grad=False)  # replaced
    _inference_matches_plain(model)


def test_lora_on_some_siblings_splits_them():
    """LoRA wraps q and v after the engine prepacked (a stacked copy cannot hold B A x): q/k/v run
    one by one, each base on its own packed copy, and the output is the LoRA model's."""
    model = _tiny()
    model.prepack()
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval()
    _inference_matches_plain(model)
    attn = model.layers[0].self_attn
    assert attn.packed is None and attn.k_proj.packed is not None and attn.q_proj.base_layer.packed is not None
    assert model.layers[0].mlp.packed is not None  # gate/up are not targets: still stacked
