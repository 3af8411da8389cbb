"""Score-DPO by influence: all pairs of a question from one packed pass (trainer grouping "question").

    PairExamples ──group_by_question──▶ one QuestionExample per prompt:
        z   the distinct responses, keyed by (token ids, score)
        λ   per distinct pair (w, l): the sum of its weights — the exact P* if every pair came
            once with weight P*, the drawn multiplicity / N if the N pairs were drawn from P*

    per question q of a micro-batch (question_objective):
        log πθ(z|x_q) for all its z       one packed row (batch.pack, response_logps)
        L_q, I(z)                         grouped_score_dpo_loss (loss.py)
        Σ_q Λ'_q L_q                      Λ'_q ∝ Σλ over q's pairs, mean 1 over the questions

Backward sends −β I(z) Λ'_q / n to each log πθ(z|x_q): the exact Σ_pairs λ ∇ℓ of the
question, which pair mode would estimate with one pass per drawn pair. Over the questions
Σ_q Λ'_q L_q ∝ Σ_m λ_m ℓ_m — the same objective as pair mode's epoch, taken as one full-batch
step per question (or per grad_accum questions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batch import Ids, PairExample, QuestionExample
from .loss import grouped_dpo_loss, grouped_score_dpo_loss, implicit_reward, reward_metrics, theorem2_condition

# what question_objective sums per micro-batch; the trainer all-reduces them in this order
STATS = ("margin", "accuracy", "mass", "inside", "responses", "pairs")


def group_by_question(pairs: list[PairExample]) -> list[QuestionExample]:
    """The pairs regrouped by prompt, in order of first appearance; repeated pairs merged, λ summed.

    Responses with the same tokens and the same score are one z (they have the same log-prob and
    enter the loss identically); the same tokens with two scores stay two responses.
    """
    questions: dict[Ids, tuple[dict[tuple[Ids, float], int], dict[tuple[int, int], float]]] = {}
    for p in pairs:
        responses, weights = questions.setdefault(p.prompt_ids, ({}, {}))
        w = responses.setdefault((p.chosen_ids, p.s_w), len(responses))
        l = responses.setdefault((p.rejected_ids, p.s_l), len(responses))  # noqa: E741
        weights[w, l] = weights.get((w, l), 0.0) + p.weight
    return [QuestionExample(prompt, tuple(ids for ids, _ in responses), tuple(s for _, s in responses),
                            tuple(weights), tuple(weights.values()))
            for prompt, (responses, weights) in questions.items()]


def question_objective(batch: list[QuestionExample], policy: Tensor, reference: Tensor, weights: Tensor,
                       loss: str, beta: float, f: str) -> tuple[Tensor, Tensor]:
    """(Σ_q Λ'_q L_q, the STATS) for a micro-batch of questions.

    policy, reference (R,): log-probs of every response of the batch, question by question (as
    batch.pack lays them out). weights (b,): Λ'_q. `loss` is "score_dpo" or "dpo". Stats: the
    Λ'·P*-weighted sums of the pairs' reward margins and accuracies, their total weight,
    the responses inside Theorem 2's condition, the responses, the distinct pairs.
    A question without pairs adds nothing to the loss and its gradient.
    """
    total = policy.new_zeros(())
    stats = torch.zeros(len(STATS), dtype=torch.float64)
    sizes = [len(q.responses) for q in batch]
    for q, pol, ref, w in zip(batch, policy.split(sizes), reference.split(sizes), weights):
        scores = torch.tensor(q.scores, dtype=pol.dtype, device=pol.device)  # (k,)
        pairs = torch.tensor(q.pairs, dtype=torch.long, device=pol.device).reshape(-1, 2)  # (m, 2)
        lam = torch.tensor(q.weights, dtype=pol.dtype, device=pol.device)  # (m,)
        if loss == "score_dpo":
            loss_q, _ = grouped_score_dpo_loss(pol, ref, scores, pairs, lam, beta, f)
        else:
            loss_q, _ = grouped_dpo_loss(pol, ref, pairs, lam, beta)
        total = total + loss_q * w
        win, lose = pairs[:, 0], pairs[:, 1]
        m = reward_metrics(pol[win], pol[lose], ref[win], ref[lose], beta)
        share = lam / lam.sum() * w  # (m,) each pair's weight in the step
        inside = theorem2_condition(implicit_reward(pol, ref, beta).detach(), scores, f)  # (k,)
        stats += torch.tensor([(share * m["reward_margin"]).sum().item(), (share * m["reward_accuracy"]).sum().item(),
                               share.sum().item(), inside.sum().item(), len(q.responses), len(q.pairs)],
                              dtype=torch.float64)
    return total, stats
