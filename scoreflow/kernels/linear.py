"""y = x Wᵀ + b on CPU from a copy of W prepacked for oneDNN, for inference.

F.linear on CPU calls MKL's GEMM, which copies W into its own blocked layout on every call once
x has more than one row. A decode step at batch 2-32 or a speculative verify pass (a few rows)
then reads and writes each weight several times, and at 8 rows SmolLM2's LM head (49152 x 576)
took several times as long as reading its bytes once (bench/HISTORY.md, "Engine speed, part 1").
oneDNN's inner product takes W already in that layout, so a call only reads it. With one row
(MKL's GEMV, no repacking) the packed copy was still faster in the decode step, so inference uses
it at every batch size (the "not prepacked" columns of bench/RESULTS.md, "Engine decode speed").

A packed copy is an opaque oneDNN tensor about the size of W; autograd does not go through it.
Sibling projections (q/k/v; gate/up) share one copy of their stacked weights: one call and one
pass over the bytes instead of three or two smaller ones (a small gain in SmolLM2's batched
decode step, none measurable at one row or on Qwen-0.5B: bench/HISTORY.md, "Engine speed, part 5").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedWeight:
    """oneDNN's blocked copy of the sources stacked on the output axis, [W_1; ...; W_n]
    (Σ out_i, in): one matrix for projections that read the same input (q/k/v, gate/up). Valid
    while every source keeps the storage and the in-place version it had when copied."""

    sources: tuple[torch.Tensor, ...]
    stamps: tuple[tuple[int, int], ...]  # (data_ptr, version) of each source
    copy: torch.Tensor

    @classmethod
    def of(cls, *weights: torch.Tensor, rows: int = 8) -> PackedWeight | None:
        """The copy of weights (out_i, in), laid out for about `rows` rows of input; None where
        this build cannot make one (no oneDNN, not fp32 on CPU) or could not tell when it goes
        stale (an inference tensor has no version counter)."""
        if any(w.device.type != "cpu" or w.dtype != torch.float32 or w.is_inference() for w in weights) \
                or not torch.backends.mkldnn.is_available():
            return None
        stacked = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach().contiguous()
        try:
            copy = torch.ops.mkldnn._reorder_linear_weight(stacked, rows)
        except (AttributeError, RuntimeError):  # a torch without this op
            return None
        return cls(weights, _stamps(weights), copy)

    def is_current(self, *weights: torch.Tensor) -> bool:
        """False once a weight is another tensor, has new storage (.to) or changed in place."""
        return (len(weights) == len(self.sources) and all(a is b for a, b in zip(weights, self.sources))
                and _stamps(weights) == self.stamps)


def _stamps(weights: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((w.data_ptr(), w._version) for w in weights)


def packed_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) -> (..., Σ out_i), equal to F.linear(x, cat(packed.sources), bias) up to
    summation order."""
    return torch.ops.mkldnn._linear_pointwise(x, packed.copy, bias, "none", [], "")
