"""KV cache: preallocated per-layer key/value buffers for a set of slots (one sequence each).

    k, v:    (L, n_slots, Hkv, max_seq, D)   slot b, column s holds the s-th token of sequence b
    valid:   (n_slots, max_seq) bool          False for left padding and unwritten columns
    lengths: (n_slots,)                       columns used per slot

The model calls `begin(valid)` once per forward and `attend` once per layer. Three plans:

- append (the default): rows 0..B-1 each append T tokens at their own length — a lockstep
  left-padded prefill, or one decode step of B ragged sequences. Attention reads the cache
  in place (rows 0..B-1, columns 0..max length): no gather, no copy.
- packed prefill (`plan_packed`, set by the engine before the forward): several prompts
  concatenated into one (1, ΣT) input, no padding in the projections/MLP; keys/values are
  scattered into their slots and attention runs per prompt (padded to the longest prompt only
  inside attention).
- shared prefix (decode, when the engine sets `shared_prefix` = C > 0): every row 0..B-1
  starts with the same C tokens (so their cached keys agree there); attention reads columns
  0..C of row 0 once for all rows, and each row's own columns C..length
  (kernels.attention.shared_prefix_attention).

Slots are recycled by the engine (continuous batching): `fork` copies a prefilled prompt to
other slots (n samples share one prefill), `move` compacts rows so active sequences stay in
rows 0..B-1, `release` empties a slot.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kernels.attention import attention, causal_mask, shared_prefix_attention


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
        self.shared_prefix = 0  # C: tokens rows 0..B-1 share at columns 0..C (set by the engine)
        self._plan = None
        self._next_plan = None

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> KVCache:
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
    def begin(self, valid: torch.Tensor) -> None:
        """Called by the model: use the packed plan if one was set, else rows 0..B-1 append T
        tokens each; valid (B, T) marks real (non-padding) tokens."""
        if self._next_plan is not None:
            self._plan, self._next_plan = self._next_plan, None
            return
        B, T = valid.shape
        start = torch.tensor(self.lengths[:B], device=valid.device)  # (B,)
        if max(self.lengths[:B]) + T > self.max_seq:
            raise RuntimeError(f"KV cache full: a slot needs {max(self.lengths[:B]) + T} columns, "
                               f"{self.max_seq} allocated")
        cols = start[:, None] + torch.arange(T, device=valid.device)  # (B, T)
        rows = torch.arange(B, device=valid.device)[:, None].expand(B, T)  # (B, T)
        self.valid[rows, cols] = valid
        for b in range(B):
            self.lengths[b] += T
        S = max(self.lengths[:B])
        if T == 1 and 0 < self.shared_prefix < min(self.lengths[:B]):
            self._plan = ("shared", rows, cols, self.valid[:B, self.shared_prefix: S], S)  # own keys (B, S - C)
            return
        s = torch.arange(S, device=valid.device)
        mask = (s <= cols[..., None]) & self.valid[:B, None, :S]  # (B, T, S)
        mask |= s == cols[..., None]  # a padding query sees itself: no empty softmax rows
        self._plan = ("append", rows, cols, mask, S)

    def plan_packed(self, slots: list[int], seqlens: list[int], device) -> None:
        """One (1, ΣT) input holding whole prompts for `slots` (each slot starts empty)."""
        if max(seqlens) > self.max_seq:
            raise RuntimeError(f"prompt of {max(seqlens)} tokens exceeds the cache's {self.max_seq} columns")
        n, Tmax = len(slots), max(seqlens)
        seg = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(seqlens, device=device))
        offsets = torch.tensor([0] + seqlens[:-1], device=device).cumsum(0)
        cols = torch.arange(sum(seqlens), device=device) - offsets[seg]  # (ΣT,) position in its prompt
        rows = torch.tensor(slots, device=device)[seg]  # (ΣT,) destination slot
        for slot, T in zip(slots, seqlens):
            self.valid[slot] = False
            self.valid[slot, :T] = True
            self.lengths[slot] = T
        key_valid = torch.arange(Tmax, device=device) < torch.tensor(seqlens, device=device)[:, None]
        mask = causal_mask(key_valid, torch.arange(Tmax, device=device))  # (n, Tmax, Tmax)
        self._next_plan = ("packed", rows, cols, mask, (seg, cols, n, Tmax))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this layer's new k/v (B, Hkv, T, D) and attend; q (B, Hq, T, D) -> same shape."""
        kind, rows, cols, mask, extra = self._plan
        if kind in ("append", "shared"):
            self.k[layer][rows, :, cols] = k.transpose(1, 2)  # (B, T, Hkv, D) at (row, :, col)
            self.v[layer][rows, :, cols] = v.transpose(1, 2)
            B, S, C = q.shape[0], extra, self.shared_prefix
            if kind == "shared":
                return shared_prefix_attention(q, self.k[layer, 0, :, :C], self.v[layer, 0, :, :C],
                                               self.k[layer, :B, :, C:S], self.v[layer, :B, :, C:S], mask)
            return attention(q, self.k[layer, :B, :, :S], self.v[layer, :B, :, :S], mask)
        seg, pos, n, Tmax = extra  # packed: q/k/v are (1, H, ΣT, D)
        self.k[layer][rows, :, cols] = k[0].transpose(0, 1)  # (ΣT, Hkv, D)
        self.v[layer][rows, :, cols] = v[0].transpose(0, 1)
        def pad(x: torch.Tensor) -> torch.Tensor:
            return x[0].transpose(0, 1).new_zeros(n, Tmax, *x.shape[1:2], x.shape[-1])

        qp, kp, vp = pad(q), pad(k), pad(v)  # (n, Tmax, H, D)
        qp[seg, pos], kp[seg, pos], vp[seg, pos] = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
        out = attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), mask)  # (n, Hq, Tmax, D)
        return out.transpose(1, 2)[seg, pos].transpose(0, 1)[None]  # (1, Hq, ΣT, D)

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

    def release(self, slot: int) -> None:
        self.valid[slot] = False
        self.lengths[slot] = 0
