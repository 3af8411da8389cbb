"""y = x Wᵀ + b on CPU from a copy of W prepacked for oneDNN, for inference.

F.linear on CPU calls MKL's GEMM, which copies W into its own blocked layout on every call once
x has more than one row. A decode step at batch 2-32 or a speculative verify pass (a few rows)
then reads and writes each weight several times: at 8 rows SmolLM2's LM head (49152 x 576) took
~4x the time of reading its bytes once (bench/RESULTS.md, "Engine speed (#15)"). oneDNN's
inner product takes W already in that layout, so a call only reads it. With one row (MKL's GEMV,
no repacking) the packed copy was still 1.1-1.3x faster in the decode step, so inference uses it
at every batch size.

A packed copy is an opaque oneDNN tensor about the size of W; autograd does not go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedWeight:
    """oneDNN's blocked copy of `source` (out, in), valid while the source keeps the storage and
    the in-place version it had when copied."""

    source: torch.Tensor
    data_ptr: int
    version: int
    copy: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, rows: int = 8) -> PackedWeight | None:
        """The copy, laid out for about `rows` rows of input; None where this build cannot make
        one (no oneDNN, not fp32 on CPU) or could not tell when it goes stale (an inference
        tensor has no version counter)."""
        if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.is_inference()
                or not torch.backends.mkldnn.is_available()):
            return None
        try:
            copy = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)
        except (AttributeError, RuntimeError):  # a torch without this op
            return None
        return cls(weight, weight.data_ptr(), weight._version, copy)

    def is_current(self, weight: torch.Tensor) -> bool:
        """False once `weight` is another tensor, has new storage (.to) or changed in place."""
        return self.source is weight and (self.data_ptr, self.version) == (weight.data_ptr(), weight._version)


def packed_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) -> (..., out), equal to F.linear(x, packed.source, bias) up to summation order."""
    return torch.ops.mkldnn._linear_pointwise(x, packed.copy, bias, "none", [], "")
