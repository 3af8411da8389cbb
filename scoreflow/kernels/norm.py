"""RMSNorm: y = w * x / sqrt(mean(x^2) + eps), statistics in at least fp32 (bf16/fp16 inputs are
upcast; fp64 stays fp64, so float64 oracles through the model are exact)."""

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> (..., D) in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x, weight = x.double(), weight.double()
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
