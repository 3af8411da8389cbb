"""Grouped-query attention in plain torch ops, for prefill (T > 1) and decode (T = 1).

GQA without repeating K/V: the G = Hq/Hkv query heads that share one key/value head are folded
into the query-length axis, so one SDPA call sees Hkv heads of G*T queries each:

    q (B, Hq, T, D) --view--> (B, Hkv, G*T, D)      k, v (B, Hkv, S, D) used as they are
    row g*T + t of a group = query head (kv_head*G + g) at time t

which is HF's `repeat_kv` head order (query head h reads kv head h // G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(key_valid: torch.Tensor, q_slots: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask (B, T, S): query at slot q_slots[t] sees key slot s iff
    s <= q_slots[t] and key_valid[b, s]. A query always sees its own slot, so rows of padding
    queries are never empty (an empty row would turn softmax into NaN).

    key_valid (B, S) bool, q_slots (T,) long.
    """
    S = key_valid.shape[1]
    s = torch.arange(S, device=key_valid.device)
    causal = s[None, :] <= q_slots[:, None]  # (T, S)
    own = s[None, :] == q_slots[:, None]  # (T, S)
    return (causal[None] & key_valid[:, None, :]) | own[None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, Hq, T, D), k/v (B, Hkv, S, D), mask (B, T, S) bool (True = attend) -> (B, Hq, T, D)."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G * T, D)  # (B, Hkv, G*T, D)
    mg = mask[:, None, None].expand(B, 1, G, T, mask.shape[-1]).reshape(B, 1, G * T, -1)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg)  # (B, Hkv, G*T, D)
    return out.view(B, Hq, T, D)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 textbook form: repeat K/V per query head, softmax(q k^T / sqrt(D) + mask) v."""
    G = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, Hq, T, S)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return scores.softmax(-1) @ v
