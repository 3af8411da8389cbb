"""KV cache: preallocated per-layer key/value buffers for a set of slots (one sequence each).

    k, v:    (L, n_slots, Hkv, max_seq, D)   slot b, column s holds the s-th token of sequence b
    valid:   (n_slots, max_seq) bool          False for left padding and unwritten columns
    lengths: (n_slots,)                       columns used per slot

Each forward gets a plan from the cache (attention_plans.py): `plan_append` for rows 0..B-1
appending T tokens each (a left-padded prefill, or a decode step), `plan_decode` for one decode
step (shared-prefix attention when the rows share a long prompt), `plan_packed` for prompts
packed into one input (whole, or after a prefix they share and the slots already hold). The
plan records which columns the new tokens take; the model's layers then store their
keys/values there through it.

Slots are recycled by the engine (continuous batching): `fork` copies a prefilled prompt to
other slots (n samples share one prefill), `move` compacts rows so active sequences stay in
rows 0..B-1, `release` empties a slot.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from scoreflow.llama import Transformer

from scoreflow.kernels.attention import causal_mask

from .attention_plans import AppendPlan, PackedPrefill, SharedPrefixDecode


class KVCache(nn.Module):
    def __init__(self, n_layers: int, n_slots: int, max_seq: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        shape = (n_layers, n_slots, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("valid", torch.zeros(n_slots, max_seq, dtype=torch.bool, device=device),
                             persistent=False)
        self.lengths = [0] * n_slots  # host-side: read every step, no device sync

    @classmethod
    def for_model(cls, model: Transformer, batch: int, max_len: int) -> KVCache:
        cfg, w = model.config, model.embed_tokens.weight
        return cls(cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim,
                   w.dtype, w.device)

    @property
    def n_slots(self) -> int:
        return self.valid.shape[0]

    @property
    def max_seq(self) -> int:
        return self.valid.shape[1]

    def num_tokens(self, batch: int) -> torch.Tensor:
        """(B, 1) real tokens held by rows 0..B-1: the next RoPE position of each."""
        return self.valid[:batch].sum(-1, keepdim=True)

    # -- per-forward plans -------------------------------------------------------------------
    def plan_append(self, valid: torch.Tensor, bucket: int = 1) -> AppendPlan:
        """Rows 0..B-1 append T tokens each; valid (B, T) marks real (non-padding) tokens.
        Attention reads the longest row's columns, rounded up to a multiple of `bucket` (fixed
        shapes for CUDA graphs; columns past a row's length are never valid, so masked)."""
        rows, cols, S = self._claim(valid)
        S = min(-(-S // bucket) * bucket, self.max_seq)
        return AppendPlan(self.k, self.v, rows, cols, causal_mask(self.valid[: len(rows), :S], cols))

    def plan_decode(self, batch: int, shared_prefix: int = 0) -> AppendPlan | SharedPrefixDecode:
        """One new token for each of rows 0..batch-1. shared_prefix = C > 0 when those rows all
        start with the same C tokens: attention then reads columns 0..C once for all rows."""
        valid = torch.ones(batch, 1, dtype=torch.bool, device=self.valid.device)
        if not 0 < shared_prefix < min(self.lengths[:batch]):
            return self.plan_append(valid)
        rows, cols, S = self._claim(valid)
        return SharedPrefixDecode(self.k, self.v, rows, cols, shared_prefix, self.valid[:batch, shared_prefix:S])

    def plan_packed(self, slots: list[int], seqlens: list[int], prefix: int = 0) -> PackedPrefill:
        """One (1, ΣT) input holding prompts of seqlens tokens for `slots`: whole prompts into empty
        slots, or, with prefix = P > 0, each prompt from position P on, into slots whose columns
        0..P already hold the P tokens every one of these prompts starts with. `.pos` is each
        input token's position."""
        if max(seqlens) > self.max_seq:
            raise RuntimeError(f"prompt of {max(seqlens)} tokens exceeds the cache's {self.max_seq} columns")
        if any(self.lengths[s] != prefix for s in slots):
            raise RuntimeError(f"packed prefill into slots holding {[self.lengths[s] for s in slots]} columns, "
                               f"not the {prefix} of the shared prefix")
        device, n = self.valid.device, len(slots)
        lens = torch.tensor(seqlens, device=device) - prefix  # (n,) new tokens per prompt
        Tmax = int(lens.max())
        seg = torch.repeat_interleave(torch.arange(n, device=device), lens)  # (ΣT,)
        pos = prefix + torch.arange(int(lens.sum()), device=device) - (lens.cumsum(0) - lens)[seg]  # (ΣT,)
        for slot, T in zip(slots, seqlens):
            self.valid[slot] = False
            self.valid[slot, :T] = True
            self.lengths[slot] = T
        key_valid = torch.arange(Tmax, device=device) < lens[:, None]  # (n, Tmax)
        mask = causal_mask(key_valid, torch.arange(Tmax, device=device))  # (n, Tmax, Tmax)
        if prefix:
            mask = torch.cat([mask.new_ones(n, Tmax, prefix), mask], dim=-1)  # (n, Tmax, P + Tmax)
        return PackedPrefill(self.k, self.v, torch.tensor(slots, device=device)[seg], seg, pos, mask, prefix)

    def _claim(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Give rows 0..B-1 the next T columns each; returns rows, cols (B, T) and the new longest length S."""
        B, T = valid.shape
        if max(self.lengths[:B]) + T > self.max_seq:
            raise RuntimeError(f"KV cache full: a slot needs {max(self.lengths[:B]) + T} columns, "
                               f"{self.max_seq} allocated")
        start = torch.tensor(self.lengths[:B], device=valid.device)  # (B,)
        cols = start[:, None] + torch.arange(T, device=valid.device)  # (B, T)
        rows = torch.arange(B, device=valid.device)[:, None].expand(B, T)  # (B, T)
        self.valid[rows, cols] = valid
        for b in range(B):
            self.lengths[b] += T
        return rows, cols, max(self.lengths[:B])

    # -- slot management (continuous batching) ----------------------------------------------
    def fork(self, src: int, dsts: list[int]) -> None:
        """Copy slot `src`'s cached tokens into `dsts` (n samples of one prefilled prompt)."""
        n = self.lengths[src]
        idx = torch.tensor(dsts, device=self.k.device)
        self.k[:, idx, :, :n] = self.k[:, src: src + 1, :, :n]
        self.v[:, idx, :, :n] = self.v[:, src: src + 1, :, :n]
        self.valid[idx] = self.valid[src].clone()
        for d in dsts:
            self.lengths[d] = n

    def move(self, src: int, dst: int) -> None:
        """Move slot src's contents to slot dst (compaction); src becomes empty."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.valid[dst] = self.valid[src].clone()
        self.lengths[dst] = n
        self.release(src)

    def truncate(self, slot: int, length: int) -> None:
        """Forget slot's columns from `length` on (rejected draft tokens, right padding)."""
        self.valid[slot, length:] = False
        self.lengths[slot] = length

    def release(self, slot: int) -> None:
        self.valid[slot] = False
        self.lengths[slot] = 0
