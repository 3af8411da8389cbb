"""KV cache: preallocated per-layer key/value buffers, written in place at slot indices.

    k[layer]: (B, Hkv, S_max, D)   slot s of row b holds the key of that row's s-th input
    valid:    (B, S_max) bool       False for left padding and for slots not written yet

Rows advance in lockstep (slot = time index); padding is masked, not skipped.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(self, n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("valid", torch.zeros(batch, max_len, dtype=torch.bool, device=device),
                             persistent=False)
        self.length = 0  # slots used so far

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> KVCache:
        cfg, w = model.config, model.embed_tokens.weight
        return cls(cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim,
                   w.dtype, w.device)

    def num_tokens(self, batch: int) -> torch.Tensor:
        """(B, 1) real tokens held per row: the next RoPE position."""
        return self.valid[:batch, : self.length].sum(-1, keepdim=True)

    def append(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve T slots for the next input; valid (B, T). Returns slots (T,), key_valid (B, S)."""
        B, T = valid.shape
        end = self.length + T
        if end > self.valid.shape[1]:
            raise RuntimeError(f"KV cache full: {end} slots needed, {self.valid.shape[1]} allocated")
        slots = torch.arange(self.length, end, device=valid.device)
        self.valid[:B, self.length:end] = valid
        self.length = end
        return slots, self.valid[:B, :end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor):
        """Write k/v (B, Hkv, T, D) at `slots`; return the filled part (B, Hkv, S, D) of the layer."""
        B = k.shape[0]
        self.k[layer, :B].index_copy_(2, slots, k)
        self.v[layer, :B].index_copy_(2, slots, v)
        return self.k[layer, :B, :, : self.length], self.v[layer, :B, :, : self.length]
