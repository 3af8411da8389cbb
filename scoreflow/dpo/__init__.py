"""Score-DPO: the loss with its hand-derived backward (loss.py), per pair and per question
(Score-DPO by influence, group.py), and preference pairs (pairs.py)."""

from scoreflow.dpo.loss import (
    SCORE_MAPS,
    GroupedScoreDPOFunction,
    ScoreDPOFunction,
    dpo_loss,
    grouped_dpo_loss,
    grouped_score_dpo_loss,
    implicit_reward,
    influence,
    reward_metrics,
    score_dpo_loss,
    theorem2_condition,
)
from scoreflow.dpo.pairs import (
    GAPS,
    PreferencePair,
    ScoredWorkflow,
    build_pairs,
    cubic_gap,
    exact_pairs,
    pairs_from_records,
    pairs_to_records,
    sample_pairs,
    target_distribution,
    template_similarity,
)

__all__ = [
    "SCORE_MAPS",
    "GroupedScoreDPOFunction",
    "ScoreDPOFunction",
    "dpo_loss",
    "grouped_dpo_loss",
    "grouped_score_dpo_loss",
    "implicit_reward",
    "influence",
    "reward_metrics",
    "score_dpo_loss",
    "theorem2_condition",
    "GAPS",
    "PreferencePair",
    "ScoredWorkflow",
    "build_pairs",
    "cubic_gap",
    "exact_pairs",
    "pairs_from_records",
    "pairs_to_records",
    "sample_pairs",
    "target_distribution",
    "template_similarity",
]
