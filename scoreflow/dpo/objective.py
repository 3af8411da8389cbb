"""What one micro-batch adds to a training step: Σ_m λ_m ℓ_m over its pairs, and its statistics.

    pair grouping      a unit is one drawn pair   Σ_u λ_u ℓ_u                  score_dpo_loss / dpo_loss
    question grouping  a unit is one question     Σ_q Σ_m λ_q,m ℓ_q,m          grouped_*_loss, one packed
                                                                               pass per question

λ is a pair's weight (pairs.py: 1/N for a pair drawn from P*, P*(w,l) in exact mode; in question
grouping the weights of repeated pairs are summed, group.py). Both sums are the same objective;
the trainer divides it once, by the step's units times the mean unit weight.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import torch
from torch import Tensor

from .batch import PairExample, QuestionExample
from .loss import (dpo_loss, grouped_dpo_loss, grouped_score_dpo_loss, implicit_reward, reward_metrics,
                   score_dpo_loss, theorem2_condition)


@dataclass
class StepStats:
    """Sums over a step's micro-batches, all-reduced across ranks in field order.

    margin and accuracy are Σ share·(r_w − r_l) and Σ share·[r_w > r_l] with share = 1 per pair in
    pair grouping and λ in question grouping; mass = Σ share, so margin / mass is the mean."""

    loss: float = 0.0       # the micro-batches' shares of the step's loss
    tokens: float = 0.0     # packed tokens forwarded
    margin: float = 0.0
    accuracy: float = 0.0
    mass: float = 0.0
    inside: float = 0.0     # responses inside Theorem 2's condition
    responses: float = 0.0
    pairs: float = 0.0      # distinct pairs

    def __iadd__(self, other: StepStats) -> StepStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_tensor(self) -> Tensor:
        return torch.tensor(astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: Tensor) -> StepStats:
        return cls(*t.tolist())


def pair_objective(batch: list[PairExample], policy: Tensor, reference: Tensor,
                   loss: str, beta: float, f: str) -> tuple[Tensor, StepStats]:
    """(Σ_u λ_u ℓ_u, stats) for a micro-batch of pairs. policy, reference (2b,): chosen and rejected
    log-probs alternating (as batch.pack lays them out); λ_u is each pair's weight."""
    lam = torch.tensor([p.weight for p in batch], dtype=policy.dtype, device=policy.device)  # (b,)
    pol_w, pol_l, ref_w, ref_l = policy[0::2], policy[1::2], reference[0::2], reference[1::2]  # (b,) each
    s_w = torch.tensor([p.s_w for p in batch], dtype=policy.dtype, device=policy.device)  # (b,)
    s_l = torch.tensor([p.s_l for p in batch], dtype=policy.dtype, device=policy.device)  # (b,)
    ell = (score_dpo_loss(pol_w, pol_l, ref_w, ref_l, s_w, s_l, beta, f) if loss == "score_dpo"
           else dpo_loss(pol_w, pol_l, ref_w, ref_l, beta))  # (b,)
    rewards = implicit_reward(policy, reference, beta).detach()  # (2b,) r, computed once for the stats
    m = reward_metrics(rewards[0::2], rewards[1::2])
    inside = theorem2_condition(rewards, torch.stack([s_w, s_l], 1).flatten(), f)  # (2b,)
    stats = StepStats(margin=m["reward_margin"].sum().item(), accuracy=m["reward_accuracy"].sum().item(),
                      mass=len(batch), inside=inside.sum().item(), responses=inside.numel(), pairs=len(batch))
    return (lam * ell).sum(), stats


def question_objective(batch: list[QuestionExample], policy: Tensor, reference: Tensor,
                       loss: str, beta: float, f: str) -> tuple[Tensor, StepStats]:
    """(Σ_q Σ_m λ_q,m ℓ_q,m, stats) for a micro-batch of questions.

    policy, reference (R,): log-probs of every response of the batch, question by question (as
    batch.pack lays them out). `loss` is "score_dpo" or "dpo". A question without pairs adds
    nothing to the loss and its gradient.
    """
    total, stats = policy.new_zeros(()), StepStats()
    sizes = [len(q.responses) for q in batch]
    for q, pol, ref in zip(batch, policy.split(sizes), reference.split(sizes)):
        scores = torch.tensor(q.scores, dtype=pol.dtype, device=pol.device)  # (k,)
        pairs = torch.tensor(q.pairs, dtype=torch.long, device=pol.device).reshape(-1, 2)  # (m, 2)
        lam = torch.tensor(q.weights, dtype=pol.dtype, device=pol.device)  # (m,)
        ell = (grouped_score_dpo_loss(pol, ref, scores, pairs, beta, f) if loss == "score_dpo"
               else grouped_dpo_loss(pol, ref, pairs, beta))  # (m,)
        total = total + (lam * ell).sum()
        rewards = implicit_reward(pol, ref, beta).detach()  # (k,) r, computed once for the stats
        m = reward_metrics(rewards[pairs[:, 0]], rewards[pairs[:, 1]])
        inside = theorem2_condition(rewards, scores, f)  # (k,)
        stats += StepStats(margin=(lam * m["reward_margin"]).sum().item(),
                           accuracy=(lam * m["reward_accuracy"]).sum().item(), mass=lam.sum().item(),
                           inside=inside.sum().item(), responses=len(q.responses), pairs=len(q.pairs))
    return total, stats
