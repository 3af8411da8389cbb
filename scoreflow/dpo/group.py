"""Score-DPO by influence: all pairs of a question from one packed pass (trainer grouping "question").

    PairExamples ──group_by_question──▶ one QuestionExample per prompt:
        z   the distinct responses, keyed by (token ids, score)
        λ   per distinct pair (w, l): the sum of its weights — the exact P* if every pair came
            once with weight P*, the drawn multiplicity / N if the N pairs were drawn from P*

    per question q of a micro-batch (objective.question_objective):
        log πθ(z|x_q) for all its z       one packed row (batch.pack, response_logps)
        ℓ_m for its pairs                 grouped_score_dpo_loss (loss.py)
        Σ_m λ_m ℓ_m                       summed over the batch's questions; the trainer divides once

Backward sends −β I(z) (times the trainer's normaliser) to each log πθ(z|x_q): the exact
Σ_pairs λ ∇ℓ of the question, which pair mode would estimate with one pass per drawn pair.
Over the questions it is the same objective as pair mode's epoch, taken as one full-batch
step per question (or per grad_accum questions).
"""
from __future__ import annotations

from .batch import Ids, PairExample, QuestionExample


def group_by_question(pairs: list[PairExample]) -> list[QuestionExample]:
    """The pairs regrouped by prompt, in order of first appearance; repeated pairs merged, λ summed.

    Responses with the same tokens and the same score are one z (they have the same log-prob and
    enter the loss identically); the same tokens with two scores stay two responses.
    """
    questions: dict[Ids, tuple[dict[tuple[Ids, float], int], dict[tuple[int, int], float]]] = {}
    for p in pairs:
        responses, lam = questions.setdefault(p.prompt_ids, ({}, {}))
        win = responses.setdefault((p.chosen_ids, p.s_w), len(responses))
        lose = responses.setdefault((p.rejected_ids, p.s_l), len(responses))
        lam[win, lose] = lam.get((win, lose), 0.0) + p.weight
    return [QuestionExample(prompt, tuple(ids for ids, _ in responses), tuple(s for _, s in responses),
                            tuple(lam), tuple(lam.values()))
            for prompt, (responses, lam) in questions.items()]
