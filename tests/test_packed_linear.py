"""Prepacked weights (kernels/linear.py, llama.model.Linear): the same product as F.linear, used
only where meant (inference mode), and never stale after an in-place change."""

import pytest
import torch
import torch.nn.functional as F

from kernels.linear import PackedWeight, packed_linear
from scoreflow.llama.model import Linear


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (8, 64), (2, 5, 64), (40, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_float64(shape, bias):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g) if bias else None
    x = torch.randn(shape, generator=g)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(packed_linear(x, PackedWeight.of(w), b).double(), want, rtol=1e-5, atol=1e-5)


def _with_foreign_copy(layer: Linear) -> torch.Tensor:
    """Give `layer` a packed copy of another weight (at the current version) and return that
    weight, so an output tells which path computed it."""
    other = torch.randn_like(layer.weight)
    layer.packed = PackedWeight(layer.weight, layer.weight.data_ptr(), layer.weight._version,
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
