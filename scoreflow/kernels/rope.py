"""Rotary position embedding, half-split layout (HF checkpoints): the pair rotated together is
(x[i], x[i + D/2]), i.e.  rope(x) = x * cos + cat(-x2, x1) * sin.

Angles come from a positions tensor (B, T), never from Python-int slicing, so ragged batches
and cached decoding index the same way.
"""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, theta: float, scaling=None) -> torch.Tensor:
    """(D/2,) fp32 inverse frequencies theta^(-2i/D), with Llama-3 scaling if given.

    Llama-3 scaling (factor s, low/high frequency factors l/h, original context C): wavelengths
    longer than C/l are stretched by s, shorter than C/h kept, and in between interpolated with
    weight a = (C/wavelen - l) / (h - l):  f' = (1 - a) f / s + a f.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    C = scaling.original_max_position_embeddings
    lo, hi, s = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
    wavelen = 2 * math.pi / inv_freq
    a = ((C / wavelen - lo) / (hi - lo)).clamp(0.0, 1.0)  # 0 = long waves, 1 = short waves
    return (1 - a) * inv_freq / s + a * inv_freq


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) int -> cos, sin (B, T, D) fp32."""
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, D)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D), cos/sin (B, T, D) -> (B, H, T, D); the rotation runs in at least fp32."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def apply_rope_reference(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """float64 complex-number form: pair (x_i, x_{i+D/2}) is multiplied by e^{i * pos * f_i}."""
    D = x.shape[-1]
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())
    angle = positions.double()[:, None, :, None] * inv_freq.double()  # (B, 1, T, D/2)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1)
