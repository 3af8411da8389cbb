"""Grouped-query attention in plain torch ops, for prefill (T > 1) and decode (T = 1).

GQA without repeating K/V: the G = Hq/Hkv query heads that share one key/value head are folded
into the query-length axis, so one SDPA call sees Hkv heads of G*T queries each:

    q (B, Hq, T, D) --view--> (B, Hkv, G*T, D)      k, v (B, Hkv, S, D) used as they are
    row g*T + t of a group = query head (kv_head*G + g) at time t

which is HF's `repeat_kv` head order (query head h reads kv head h // G).

`shared_prefix_attention` is the decode step (T = 1) of a batch whose rows all start with the
same C tokens (k samples of one prompt, or prompts behind one long system message): the
shared keys are read once for the whole batch instead of once per row. It is two attentions
merged exactly by their log-normalisers (`attention_with_lse`: on CPU torch's fused flash
kernel, which returns them).
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

    computed as two attentions, each with its log-normaliser l = logsumexp(s_part), merged:

        out_b = (o_shared e^l_shared + o_own e^l_own) / (e^l_shared + e^l_own)

    The prefix part is one attention of all rows' queries (B·G per kv head) over the prefix keys,
    which are read once for the batch instead of once per row.
    q (B, Hq, 1, D); k_shared, v_shared (Hkv, C, D); k_own, v_own (B, Hkv, S, D);
    own_valid (B, S) bool, at least one True per row -> (B, Hq, 1, D).
    """
    B, Hq, _, D = q.shape
    Hkv = k_shared.shape[0]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G, D)  # (B, Hkv, G, D)
    qs = qg.transpose(0, 1).reshape(1, Hkv, B * G, D)  # every row's queries per kv head
    o_shared, l_shared = attention_with_lse(qs, k_shared[None], v_shared[None])  # (1, Hkv, B*G, D), (1, Hkv, B*G)
    o_shared = o_shared.view(Hkv, B, G, D).transpose(0, 1)  # (B, Hkv, G, D)
    l_shared = l_shared.view(Hkv, B, G, 1).transpose(0, 1)  # (B, Hkv, G, 1)
    own_bias = torch.zeros(own_valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~own_valid, float("-inf"))
    o_own, l_own = attention_with_lse(qg, k_own, v_own, own_bias[:, None, None, :])  # (B, Hkv, G, D), (B, Hkv, G)
    l_own = l_own[..., None]
    top = torch.maximum(l_shared, l_own)
    w_shared, w_own = (l_shared - top).exp(), (l_own - top).exp()
    return ((o_shared * w_shared + o_own * w_own) / (w_shared + w_own)).reshape(B, Hq, 1, D)


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(s) v and logsumexp(s), for s = q kᵀ / sqrt(D) + bias, per head (no GQA folding).
    q (N, H, T, D), k/v (N, H, S, D), bias additive, broadcastable to (N, H, T, S), -inf = masked
    -> (N, H, T, D), (N, H, T). On CPU one fused kernel (torch's flash attention for CPU, which
    also returns the logsumexp); elsewhere the scores are materialised."""
    if q.device.type == "cpu" and _FLASH_CPU is not None:
        return _FLASH_CPU(q, k, v, attn_mask=bias)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (N, H, T, S)
    if bias is not None:
        s = s + bias
    lse = s.logsumexp(-1)  # (N, H, T)
    return (s - lse[..., None]).exp() @ v, lse


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 textbook form: repeat K/V per query head, softmax(q k^T / sqrt(D) + mask) v."""
    G = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, Hq, T, S)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return scores.softmax(-1) @ v
