"""Sequence log-probs of a prompt's responses, with the prompt run through the trunk once.

One row holds one prompt and the responses after it: a preference pair (k = 2: chosen, then
rejected) or a whole question (its k distinct responses, for Score-DPO by influence):

    tokens     p0 .. pP-1 | a0 .. aA-1  | b0 .. bB-1  | ... | z0 .. zZ-1  | pad
    positions  0  .. P-1  | P  .. P+A-1 | P  .. P+B-1 | ... | P  .. P+Z-1 | 0
    segment    0  .. 0    | 1  ..  1    | 2  ..  2    | ... | k  ..  k    | -1

and a (T, T) mask lets each token see earlier tokens of the prompt and of its own segment only
(\\ = causal within the block, # = all, . = nothing):

                 prompt   a    b   ...  z
        prompt  [  \\      .    .        .  ]
        a       [  #      \\    .        .  ]
        b       [  #      .    \\        .  ]
        z       [  #      .    .        \\  ]

so no response sees another — exactly as if each were its own sequence — but the prompt's
keys/values (and their gradients) are computed once per row, not once per response. The LM head
and log-softmax run only at the positions that predict a response token, and in chunks:

    token j of a response starting at column S is predicted at  P-1 (j = 0)  or  S + j - 1
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from scoreflow.kernels.attention import causal_mask
from scoreflow.llama.model import MaskedPlan, Transformer

Ids = tuple[int, ...]
LOGITS_BUDGET = 1 << 23  # logit entries alive at once in the LM head (32 MiB in fp32)


@dataclass(frozen=True)
class PairExample:
    """Token ids of one preference pair: winner w (chosen) and loser l (rejected)."""

    prompt_ids: Ids
    chosen_ids: Ids
    rejected_ids: Ids
    s_w: float
    s_l: float
    weight: float = 1.0

    def __post_init__(self):
        if not self.prompt_ids or not self.chosen_ids or not self.rejected_ids:
            raise ValueError("a pair needs a non-empty prompt and non-empty chosen/rejected responses")

    @property
    def responses(self) -> tuple[Ids, Ids]:
        return self.chosen_ids, self.rejected_ids

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class QuestionExample:
    """One question for Score-DPO by influence: the prompt, its k distinct responses z with
    scores s_z, and its pairs as (winner, loser) indices into the responses, with weights λ
    (the exact P*, or how often each pair was drawn). A question may have no pair."""

    prompt_ids: Ids
    responses: tuple[Ids, ...]
    scores: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not self.prompt_ids or not self.responses or not all(self.responses):
            raise ValueError("a question needs a non-empty prompt and at least one response, none empty")
        if len(self.scores) != len(self.responses) or len(self.weights) != len(self.pairs):
            raise ValueError(f"need one score per response and one weight per pair; got {len(self.scores)} "
                             f"scores for {len(self.responses)} responses, {len(self.weights)} weights for "
                             f"{len(self.pairs)} pairs")
        if any(not 0 <= i < len(self.responses) for pair in self.pairs for i in pair):
            raise ValueError(f"pair indices must lie in [0, {len(self.responses)})")

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + sum(map(len, self.responses))


@dataclass(frozen=True)
class PackedRows:
    input_ids: torch.Tensor  # (B, T)
    positions: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T, T) bool
    predict_at: torch.Tensor  # (N,) flat index b*T + t of the hidden state predicting each target
    targets: torch.Tensor  # (N,) response token ids
    owner: torch.Tensor  # (N,) flat index of the target's response: row by row, in order
    n_responses: int  # R

    def to(self, device) -> PackedRows:
        return PackedRows(*(v.to(device) if isinstance(v, torch.Tensor) else v
                            for v in (getattr(self, f.name) for f in fields(self))))


def pack(units: Sequence[PairExample | QuestionExample]) -> PackedRows:
    """One row per pair or question: its prompt, then its responses (a pair: chosen, rejected).
    Responses are numbered on across the rows: pair b's chosen is response 2b, its rejected 2b + 1."""
    B, T = len(units), max(u.tokens for u in units)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    predict_at, targets, owner, n_responses = [], [], [], 0
    for b, u in enumerate(units):
        P, row = len(u.prompt_ids), b * T
        ids[b, : u.tokens] = torch.tensor([*u.prompt_ids, *(t for resp in u.responses for t in resp)])
        pos[b, :P], seg[b, :P] = torch.arange(P), 0
        start = P
        for i, resp in enumerate(u.responses):
            end = start + len(resp)
            pos[b, start:end], seg[b, start:end] = torch.arange(P, P + len(resp)), i + 1
            predict_at += [row + P - 1] + list(range(row + start, row + end - 1))
            targets += resp
            owner += [n_responses] * len(resp)
            n_responses, start = n_responses + 1, end
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    visible = (k_seg == 0) | (k_seg == q_seg) | torch.eye(T, dtype=torch.bool)  # prompt, own segment, self
    mask = causal_mask(seg >= 0, torch.arange(T)) & visible  # (B, T, T); pads see only themselves
    return PackedRows(ids, pos, mask, torch.tensor(predict_at), torch.tensor(targets), torch.tensor(owner),
                      n_responses)


def response_logps(model: Transformer, packed: PackedRows, chunk: int | None = None) -> torch.Tensor:
    """Sum of each response's token log-probs, (R,) in packing order; fp32 (fp64 for a float64
    model). The LM head runs on `chunk` response positions at a time (see token_logps)."""
    B, T = packed.input_ids.shape
    h = model.trunk(packed.input_ids, packed.positions, MaskedPlan(packed.mask))  # (B, T, C)
    h = h.reshape(B * T, -1)[packed.predict_at]  # (N, C) only where a response token is predicted
    chunk = chunk or max(1, LOGITS_BUDGET // model.config.vocab_size)
    logps = token_logps(model.lm_head, h, packed.targets, chunk)  # (N,)
    return logps.new_zeros(packed.n_responses).index_add(0, packed.owner, logps)  # (R,)


def pair_logps(model: Transformer, packed: PackedRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of response-token log-probs of packed pairs: (chosen (B,), rejected (B,))."""
    sums = response_logps(model, packed)  # (2B,)
    return sums[0::2], sums[1::2]


def token_logps(lm_head, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log softmax(lm_head(h))[target], (N,), from h (N, C) and targets (N,), `chunk` rows at a time.

    With gradients on, each chunk is checkpointed: its (chunk, V) logits are freed after the
    forward and recomputed in the backward, so no more than one chunk's logits ever exist, never
    all N x V of them (by default 170 rows a chunk for SmolLM2, V = 49,152; 55 for Qwen, V = 151,936).
    """
    parts = [checkpoint(_chunk_logps, lm_head, h[s: s + chunk], targets[s: s + chunk], use_reentrant=False)
             if torch.is_grad_enabled() else _chunk_logps(lm_head, h[s: s + chunk], targets[s: s + chunk])
             for s in range(0, h.shape[0], chunk)]
    return torch.cat(parts)  # (N,)


def _chunk_logps(lm_head, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(h)  # (n, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; fp64 stays
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # (n,)
