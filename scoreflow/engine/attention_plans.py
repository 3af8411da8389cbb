"""How one forward's attention reads and writes the KV cache: one small object per layout.

The engine picks a plan per forward and hands it to `model.trunk`; every layer then calls
`plan.attend(layer, q, k, v)`, which stores the layer's new keys/values in the cache buffers
and attends over what the rows hold. The buffers are the cache's (see kv_cache.py):

    k_cache, v_cache: (L, n_slots, Hkv, max_seq, D)

- `AppendPlan`: rows 0..B-1 each append T tokens at their own length: a lockstep left-padded
  prefill into slots, or (T = 1) one decode step of B ragged sequences. Attention reads the
  cache in place (rows 0..B-1, columns 0..S): no gather, no copy.
- `SharedPrefixDecode`: a decode step where every row starts with the same C prompt tokens;
  their keys are read once (row 0's columns 0..C) for all rows.
- `PackedPrefill`: prompts concatenated into one (1, ΣT) input, with no padding in the
  projections and MLP; keys/values are scattered into their slots and attention runs per prompt,
  padded to the longest prompt only inside attention. With a prefix P > 0 the input holds each
  prompt from position P on: the slots already hold the P tokens all the prompts start with
  (prefilled once and forked), and every prompt's queries read them before their own keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scoreflow.kernels.attention import attention, shared_prefix_attention


@dataclass(frozen=True)
class AppendPlan:
    k_cache: torch.Tensor  # (L, n_slots, Hkv, max_seq, D)
    v_cache: torch.Tensor
    rows: torch.Tensor  # (B, T) slot of each new token: row b is slot b
    cols: torch.Tensor  # (B, T) its column
    mask: torch.Tensor  # (B, T, S) causal over each row's valid columns 0..S

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, T, D), new k/v (B, Hkv, T, D) -> (B, Hq, T, D)."""
        B, S = q.shape[0], self.mask.shape[-1]
        self.k_cache[layer][self.rows, :, self.cols] = k.transpose(1, 2)  # (B, T, Hkv, D) at (row, :, col)
        self.v_cache[layer][self.rows, :, self.cols] = v.transpose(1, 2)
        return attention(q, self.k_cache[layer, :B, :, :S], self.v_cache[layer, :B, :, :S], self.mask)


@dataclass(frozen=True)
class SharedPrefixDecode:
    k_cache: torch.Tensor  # (L, n_slots, Hkv, max_seq, D)
    v_cache: torch.Tensor
    rows: torch.Tensor  # (B, 1)
    cols: torch.Tensor  # (B, 1)
    prefix: int  # C: columns 0..C hold the same tokens in rows 0..B-1
    own_valid: torch.Tensor  # (B, S - C) each row's valid columns after the prefix

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, 1, D), new k/v (B, Hkv, 1, D) -> (B, Hq, 1, D)."""
        B, C = q.shape[0], self.prefix
        S = C + self.own_valid.shape[-1]
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        kc[self.rows, :, self.cols], vc[self.rows, :, self.cols] = k.transpose(1, 2), v.transpose(1, 2)
        return shared_prefix_attention(q, kc[0, :, :C], vc[0, :, :C], kc[:B, :, C:S], vc[:B, :, C:S], self.own_valid)


@dataclass(frozen=True)
class PackedPrefill:
    k_cache: torch.Tensor  # (L, n_slots, Hkv, max_seq, D)
    v_cache: torch.Tensor
    rows: torch.Tensor  # (ΣT,) destination slot of each token
    seg: torch.Tensor  # (ΣT,) which prompt (0..n-1) each token belongs to
    pos: torch.Tensor  # (ΣT,) its position in that prompt = its column in the slot
    mask: torch.Tensor  # (n, Tmax, P + Tmax): all of the prefix, then causal within each prompt
    prefix: int = 0  # P: columns 0..P of every slot hold the same tokens (read from slot rows[0])

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, Hq, ΣT, D), new k/v (1, Hkv, ΣT, D) -> (1, Hq, ΣT, D)."""
        q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)  # (ΣT, H, D)
        self.k_cache[layer][self.rows, :, self.pos] = k
        self.v_cache[layer][self.rows, :, self.pos] = v
        n, Tmax, P = self.mask.shape[0], self.mask.shape[1], self.prefix
        own = self.pos - P  # (ΣT,) place in its prompt's padded block
        padded = []
        for x in (q, k, v):
            xp = x.new_zeros(n, Tmax, *x.shape[1:])  # (n, Tmax, H, D)
            xp[self.seg, own] = x
            padded.append(xp.transpose(1, 2))  # (n, H, Tmax, D)
        q, k, v = padded
        if P:  # [shared prefix ; own keys] per prompt: (n, Hkv, P + Tmax, D)
            slot = self.rows[0]
            k = torch.cat([self.k_cache[layer, slot, :, :P].expand(n, -1, -1, -1), k], dim=2)
            v = torch.cat([self.v_cache[layer, slot, :, :P].expand(n, -1, -1, -1), v], dim=2)
        out = attention(q, k, v, self.mask)  # (n, Hq, Tmax, D)
        return out.transpose(1, 2)[self.seg, own].transpose(0, 1)[None]  # (1, Hq, ΣT, D)
