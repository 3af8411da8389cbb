"""MAgICoRE: multi-agent, iterative, coarse-to-fine refinement with reward models (SPEC B).

    answers.py     the answer of a chain, per dataset (reusing scoreflow.tasks)
    reward.py      ORM/PRM interfaces, split_steps
    local_rm.py    LocalLMRewardModel (a Math-Shepherd style causal LM, run here)
    judge_rm.py    JudgeRewardModel (an LLM judge as ORM and PRM, over an OpenAI-compatible API)
    difficulty.py  scored chains, the two easy/hard conditions, the RM-weighted vote, top-k
    agents.py      Solver / Reviewer / Refiner prompts and calls
    loop.py        classify -> (vote | review + refine + rescore + top-k), T iterations
    baselines.py   Best-of-k, self-consistency, weighted SC, Self-Refine, Self-Refine + SC
    runner.py      a resumable run over a dataset;  report.py  its results table
    __main__.py    python -m scoreflow.magicore

Exports are imported on first use (scoreflow/lazy.py).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents": ("Agents", "Ledger", "Sampling"),
    "answers": ("DATASETS", "FORMATS", "OPEN_MATH", "AnswerFormat", "answer_format"),
    "baselines": ("BASELINES", "MethodResult", "chain_baselines", "refine_baselines", "self_refine"),
    "difficulty": ("Chain", "Difficulty", "RewardStats", "best_by_orm", "classify", "confidence", "dataset_stats",
                   "majority", "top_k", "weighted_vote"),
    "judge_rm": ("JudgeRewardModel",),
    "loop": ("MagicoreConfig", "Round", "Trace", "refine_until_easy", "score_chains", "solve"),
    "local_rm": ("LocalLMRewardModel", "RewardLayout"),
    "reward": ("OutcomeRewardModel", "ProcessRewardModel", "RewardModels", "split_steps"),
    "runner": ("MagicoreRunConfig", "Runner"),
})
