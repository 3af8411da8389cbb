"""Kernels against their float64 references on random shapes, prefill and T=1 decode."""

import pytest
import torch

import scoreflow.kernels.attention as attention_module
from scoreflow.kernels.attention import attention, attention_reference, attention_with_lse, causal_mask, shared_prefix_attention
from scoreflow.kernels.norm import rms_norm, rms_norm_reference
from scoreflow.kernels.rope import apply_rope, apply_rope_reference, inv_frequencies, rope_cos_sin
from scoreflow.llama.config import RopeScaling


@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 7, 64), (2, 5, 576)])
def test_rms_norm(shape):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=g) * 3, torch.randn(shape[-1], generator=g)
    torch.testing.assert_close(rms_norm(x, w, 1e-5).double(), rms_norm_reference(x, w, 1e-5),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", [None, RopeScaling(8.0, 1.0, 4.0, 64)])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 8), (2, 3, 9, 64), (3, 2, 1, 32)])
def test_rope(scaling, B, H, T, D):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, T, D, generator=g)
    positions = torch.randint(0, 5000, (B, T), generator=g)
    inv_freq = inv_frequencies(D, 10000.0, scaling)
    out = apply_rope(x, *rope_cos_sin(positions, inv_freq))
    # fp32 angles at positions ~5000 lose ~5e-4 rad; the reference uses the same fp32 frequencies
    torch.testing.assert_close(out.double(), apply_rope_reference(x, positions, inv_freq),
                               rtol=2e-3, atol=2e-3)


def test_llama3_scaling_bands():
    """Short wavelengths untouched, long ones divided by the factor, the band between smooth."""
    D, theta = 128, 500000.0
    plain = inv_frequencies(D, theta)
    scaled = inv_frequencies(D, theta, RopeScaling(8.0, 1.0, 4.0, 8192))
    wavelen = 2 * torch.pi / plain
    short, long = wavelen < 8192 / 4, wavelen > 8192 / 1
    torch.testing.assert_close(scaled[short], plain[short])
    torch.testing.assert_close(scaled[long], plain[long] / 8)
    mid = ~short & ~long
    assert mid.any() and ((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8)).all()


@pytest.mark.parametrize("B,Hq,Hkv,T,S,D", [
    (2, 4, 4, 6, 6, 16),   # MHA prefill
    (3, 9, 3, 5, 5, 64),   # GQA 3 prefill
    (2, 8, 2, 1, 11, 32),  # GQA 4 decode over a cache
    (1, 6, 1, 4, 9, 8),    # MQA, chunk over a cache
])
def test_attention_matches_reference(B, Hq, Hkv, T, S, D):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, Hq, T, D, generator=g)
    k, v = torch.randn(B, Hkv, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)
    key_valid = torch.ones(B, S, dtype=torch.bool)
    key_valid[0, :2] = False  # left padding in row 0
    mask = causal_mask(key_valid, torch.arange(S - T, S))
    out = attention(q, k, v, mask)
    ref = attention_reference(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def kernel_path(fused: bool, monkeypatch) -> None:
    """fused: torch's flash attention for CPU (must exist in this torch); else the materialised scores."""
    if fused:
        assert attention_module._FLASH_CPU is not None
    else:
        monkeypatch.setattr(attention_module, "_FLASH_CPU", None)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
def test_attention_with_lse_returns_the_log_normaliser(fused, monkeypatch):
    kernel_path(fused, monkeypatch)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (4, 6, 6))
    bias = torch.randn(2, 1, 4, 6, generator=g).masked_fill(torch.rand(2, 1, 4, 6, generator=g) < 0.4, float("-inf"))
    bias[..., 0] = 0.0  # every query sees at least one key
    out, lse = attention_with_lse(q, k, v, bias)
    s = q.double() @ k.double().transpose(-1, -2) / 8 ** 0.5 + bias.double()  # (2, 3, 4, 6)
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), s.softmax(-1) @ v.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
@pytest.mark.parametrize("B,Hq,Hkv,C,S,D", [(4, 9, 3, 7, 5, 64), (3, 8, 2, 1, 6, 16), (2, 4, 4, 12, 1, 8)])
def test_shared_prefix_attention_equals_attention_over_the_concatenation(B, Hq, Hkv, C, S, D, fused, monkeypatch):
    kernel_path(fused, monkeypatch)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Hq, 1, D, generator=g)
    k_shared, v_shared = torch.randn(Hkv, C, D, generator=g), torch.randn(Hkv, C, D, generator=g)
    k_own, v_own = torch.randn(B, Hkv, S, D, generator=g) * 3, torch.randn(B, Hkv, S, D, generator=g)
    own_valid = torch.rand(B, S, generator=g) < 0.6
    own_valid[:, -1] = True  # the token being decoded
    out = shared_prefix_attention(q, k_shared, v_shared, k_own, v_own, own_valid)
    k = torch.cat((k_shared.expand(B, -1, -1, -1), k_own), dim=2)  # (B, Hkv, C + S, D)
    v = torch.cat((v_shared.expand(B, -1, -1, -1), v_own), dim=2)
    mask = torch.cat((torch.ones(B, C, dtype=torch.bool), own_valid), dim=1)[:, None, :]  # (B, 1, C + S)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_causal_mask_never_leaves_a_row_empty():
    key_valid = torch.tensor([[False, False, True, True]])
    mask = causal_mask(key_valid, torch.arange(4))
    assert mask.any(-1).all()
    assert mask[0, 3].tolist() == [False, False, True, True]
    assert mask[0, 0].tolist() == [True, False, False, False]  # pad query sees only itself


def test_causal_mask_with_per_row_query_slots_equals_one_row_at_a_time():
    key_valid = torch.tensor([[True, True, True, False, False], [False, True, True, True, True]])
    q_slots = torch.tensor([[1, 2], [3, 4]])  # row 0 decodes at columns 1..2, row 1 at 3..4
    mask = causal_mask(key_valid, q_slots)
    for b in range(2):
        assert torch.equal(mask[b], causal_mask(key_valid[b: b + 1], q_slots[b])[0])
    assert mask[1, 0].tolist() == [False, True, True, True, False]
