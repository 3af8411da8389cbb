"""Grouped-query attention in plain torch ops, for prefill (T > 1) and decode (T = 1).

GQA without repeating K/V: the G = Hq/Hkv query heads that share one key/value head are folded
into the query-length axis, so one SDPA call sees Hkv heads of G*T queries each:

    q (B, Hq, T, D) --view--> (B, Hkv, G*T, D)      k, v (B, Hkv, S, D) used as they are
    row g*T + t of a group = query head (kv_head*G + g) at time t

which is HF's `repeat_kv` head order (query head h reads kv head h // G).

`shared_prefix_attention` is the decode step (T = 1) of a batch whose rows all start with the
same C tokens (k samples of one prompt, or prompts behind one long system message): the
shared keys are read once for the whole batch instead of once per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(key_valid: torch.Tensor, q_slots: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask (B, T, S): query t of row b, at key slot q_slots[b, t], sees key
    slot s iff s <= q_slots[b, t] and key_valid[b, s]. A query always sees its own slot, so rows
    of padding queries are never empty (an empty row would turn softmax into NaN).

    key_valid (B, S) bool; q_slots (B, T) long, or (T,) when every row's queries sit at the same
    slots. The one causal mask of the code base: no-cache forward, KV cache and DPO packing.
    """
    s = torch.arange(key_valid.shape[1], device=key_valid.device)
    slot = q_slots[..., None]  # (T, 1) or (B, T, 1)
    return ((s <= slot) & key_valid[:, None, :]) | (s == slot)  # (B, T, S)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, Hq, T, D), k/v (B, Hkv, S, D), mask (B, T, S) bool (True = attend) -> (B, Hq, T, D)."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G * T, D)  # (B, Hkv, G*T, D)
    mg = mask[:, None, None].expand(B, 1, G, T, mask.shape[-1]).reshape(B, 1, G * T, -1)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg)  # (B, Hkv, G*T, D)
    return out.view(B, Hq, T, D)


def shared_prefix_attention(q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, k_own: torch.Tensor,
                            v_own: torch.Tensor, own_valid: torch.Tensor) -> torch.Tensor:
    """One decode step over [shared prefix | each row's own keys], one softmax over both:

        s = q·[K_shared ; K_own_b]^T / sqrt(D),   out_b = softmax(s) [V_shared ; V_own_b]

    computed as two score blocks with a common max, so the prefix is a single (Hkv, B·G, C)
    matmul over all rows' queries (a real GEMM, not B matvecs).
    q (B, Hq, 1, D); k_shared, v_shared (Hkv, C, D); k_own, v_own (B, Hkv, S, D);
    own_valid (B, S) bool, at least one True per row -> (B, Hq, 1, D).
    """
    B, Hq, _, D = q.shape
    Hkv, C = k_shared.shape[0], k_shared.shape[1]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G, D) * D ** -0.5  # (B, Hkv, G, D)
    qs = qg.transpose(0, 1).reshape(Hkv, B * G, D)  # (Hkv, B*G, D): every row's queries per kv head
    s_shared = (qs @ k_shared.transpose(1, 2)).view(Hkv, B, G, C).transpose(0, 1)  # (B, Hkv, G, C)
    s_own = (qg @ k_own.transpose(2, 3)).masked_fill(~own_valid[:, None, None, :], float("-inf"))  # (B, Hkv, G, S)
    top = torch.maximum(s_shared.amax(-1, keepdim=True), s_own.amax(-1, keepdim=True))  # (B, Hkv, G, 1)
    p_shared, p_own = (s_shared - top).exp(), (s_own - top).exp()
    total = p_shared.sum(-1, keepdim=True) + p_own.sum(-1, keepdim=True)  # (B, Hkv, G, 1)
    o_shared = (p_shared.transpose(0, 1).reshape(Hkv, B * G, C) @ v_shared).view(Hkv, B, G, D).transpose(0, 1)
    out = (o_shared + p_own @ v_own) / total  # (B, Hkv, G, D)
    return out.reshape(B, Hq, 1, D)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 textbook form: repeat K/V per query head, softmax(q k^T / sqrt(D) + mask) v."""
    G = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, Hq, T, S)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return scores.softmax(-1) @ v
