"""MAgICoRE: multi-agent, iterative, coarse-to-fine refinement with reward models (SPEC B).

    answers.py     the answer of a chain, per dataset (reusing scoreflow.tasks)
    reward.py      ORM/PRM interfaces; LocalLMRewardModel (Math-Shepherd style causal LM)
    judge_rm.py    JudgeRewardModel (an LLM judge as ORM and PRM, over an OpenAI-compatible API)
    difficulty.py  scored chains, the two easy/hard conditions, the RM-weighted vote, top-k
    agents.py      Solver / Reviewer / Refiner prompts and calls
    loop.py        classify -> (vote | review + refine + rescore + top-k), T iterations
    baselines.py   Best-of-k, self-consistency, weighted SC, Self-Refine, Self-Refine + SC
    runner.py      a resumable run over a dataset;  report.py  its results table
    __main__.py    python -m scoreflow.magicore
"""

from .agents import Agents, Ledger, Sampling
from .answers import DATASETS, FORMATS, OPEN_MATH, AnswerFormat, answer_format
from .baselines import BASELINES, MethodResult, chain_baselines, refine_baselines, self_refine
from .difficulty import (Chain, Difficulty, RewardStats, best_by_orm, classify, confidence, dataset_stats, majority,
                         top_k, weighted_vote)
from .judge_rm import JudgeRewardModel
from .loop import MagicoreConfig, Round, Trace, refine_until_easy, score_chains, solve
from .reward import (LocalLMRewardModel, OutcomeRewardModel, ProcessRewardModel, RewardLayout, RewardModels,
                     split_steps)
from .runner import MagicoreRunConfig, Runner

__all__ = [
    "Agents", "answer_format", "AnswerFormat", "BASELINES", "best_by_orm", "Chain", "chain_baselines", "classify",
    "confidence", "dataset_stats", "DATASETS", "Difficulty", "FORMATS", "JudgeRewardModel", "Ledger",
    "LocalLMRewardModel", "MagicoreConfig", "MagicoreRunConfig", "majority", "MethodResult", "OPEN_MATH",
    "OutcomeRewardModel", "ProcessRewardModel", "refine_baselines", "refine_until_easy", "RewardLayout",
    "RewardModels", "RewardStats", "Round", "Runner", "Sampling", "score_chains", "self_refine", "solve",
    "split_steps", "top_k", "Trace", "weighted_vote",
]
