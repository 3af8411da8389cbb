"""Sequence log-probs of preference pairs, with the prompt run through the trunk once.

One pair is packed into one row, chosen and rejected after a shared prompt:

    tokens     p0 p1 .. pP-1 | c0 c1 .. cC-1 | r0 r1 .. rR-1 | pad
    positions  0  1  .. P-1  | P  P+1 .. +C-1 | P  P+1 .. +R-1 | 0
    segment    0  0  .. 0    | 1  1  ..  1    | 2  2  ..  2    | -1

and a (T, T) mask lets each token see earlier tokens of the prompt and of its own segment
only, so the rejected response never sees the chosen one — exactly as if each were its own
sequence, but the prompt's keys/values (and their gradients) are computed once. The LM head and
log-softmax run only at the C + R positions that predict a response token:

    chosen  c_j is predicted at  P-1 (j = 0)  or  P + j - 1
    rejected r_j is predicted at P-1 (j = 0)  or  P + C + j - 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairExample:
    """Token ids of one preference pair: winner w (chosen) and loser l (rejected)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    s_w: float
    s_l: float
    weight: float = 1.0

    def __post_init__(self):
        if not self.prompt_ids or not self.chosen_ids or not self.rejected_ids:
            raise ValueError("a pair needs a non-empty prompt and non-empty chosen/rejected responses")


@dataclass
class PackedPairs:
    input_ids: torch.Tensor  # (B, T)
    positions: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T, T) bool
    predict_at: torch.Tensor  # (N,) flat index b*T + t of the hidden state predicting each target
    targets: torch.Tensor  # (N,) response token ids
    owner: torch.Tensor  # (N,) 2*b for chosen tokens of pair b, 2*b + 1 for rejected ones

    def to(self, device) -> PackedPairs:
        return PackedPairs(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack_pairs(pairs: list[PairExample]) -> PackedPairs:
    B = len(pairs)
    T = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    predict_at, targets, owner = [], [], []
    for b, p in enumerate(pairs):
        P, C, R = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        ids[b, : P + C + R] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids)
        pos[b, : P + C + R] = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
        seg[b, :P], seg[b, P: P + C], seg[b, P + C: P + C + R] = 0, 1, 2
        row = b * T
        predict_at += [row + P - 1] + [row + P + j - 1 for j in range(1, C)]
        predict_at += [row + P - 1] + [row + P + C + j - 1 for j in range(1, R)]
        targets += list(p.chosen_ids) + list(p.rejected_ids)
        owner += [2 * b] * C + [2 * b + 1] * R
    t = torch.arange(T)
    causal = t[None, :] <= t[:, None]  # (T, T)
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    visible = (k_seg == 0) | (k_seg == q_seg)  # prompt keys, or keys of the query's own segment
    mask = (causal & visible & (k_seg >= 0)) | torch.eye(T, dtype=torch.bool)  # pads see themselves
    return PackedPairs(ids, pos, mask, torch.tensor(predict_at), torch.tensor(targets), torch.tensor(owner))


def pair_logps(model, packed: PackedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of response-token log-probs: (chosen (B,), rejected (B,)) in fp32."""
    B, T = packed.input_ids.shape
    h = model.trunk(packed.input_ids, packed.positions, attention_mask=packed.mask)  # (B, T, C)
    h = h.reshape(B * T, -1)[packed.predict_at]  # (N, C) only where a response token is predicted
    logits = model.lm_head(h).float()  # (N, V)
    token_logps = logits.log_softmax(-1).gather(-1, packed.targets[:, None]).squeeze(-1)  # (N,)
    sums = torch.zeros(2 * B, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, packed.owner, token_logps)  # (2B,)
    return sums[0::2], sums[1::2]
