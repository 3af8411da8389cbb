"""MAgICoRE: multi-agent, iterative, coarse-to-fine refinement with reward models (SPEC B).

    answers.py     the answer of a chain, per dataset (reusing scoreflow.tasks)
    reward.py      ORM/PRM interfaces; LocalLMRewardModel (Math-Shepherd style causal LM)
    judge.py       JudgeRewardModel (an LLM judge over an OpenAI-compatible API)
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
from .judge import JudgeRewardModel
from .loop import MagicoreConfig, Round, Trace, refine_until_easy, score_chains, solve
from .reward import (LocalLMRewardModel, OutcomeRewardModel, ProcessRewardModel, RewardLayout, RewardModels,
                     split_steps)
from .runner import RunConfig, Runner

__all__ = [
    "Agents", "AnswerFormat", "BASELINES", "Chain", "DATASETS", "Difficulty", "FORMATS", "JudgeRewardModel",
    "Ledger", "LocalLMRewardModel", "MagicoreConfig", "MethodResult", "OPEN_MATH", "OutcomeRewardModel",
    "ProcessRewardModel", "RewardLayout", "RewardModels", "RewardStats", "Round", "RunConfig", "Runner", "Sampling",
    "Trace", "answer_format", "best_by_orm", "chain_baselines", "classify", "confidence", "dataset_stats",
    "majority", "refine_baselines", "refine_until_easy", "score_chains", "self_refine", "solve", "split_steps",
    "top_k", "weighted_vote",
]
