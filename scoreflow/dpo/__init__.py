"""Score-DPO: the loss with its hand-derived backward (loss.py), per pair and per question
(Score-DPO by influence, group.py), preference pairs (pairs.py) and the trainer's settings
(config.py). Exports are imported on first use (scoreflow/lazy.py)."""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("SCORE_MAPS", "TrainConfig"),
    "loss": ("GroupedScoreDPOFunction", "ScoreDPOFunction", "dpo_loss", "grouped_dpo_loss", "grouped_score_dpo_loss",
             "implicit_reward", "influence", "reward_metrics", "score_dpo_loss", "score_dpo_loss_reference",
             "theorem2_condition"),
    "pairs": ("GAPS", "PreferencePair", "ScoredWorkflow", "build_pairs", "cubic_gap", "exact_pairs",
              "pairs_from_records", "pairs_to_records", "sample_pairs", "target_distribution"),
})
