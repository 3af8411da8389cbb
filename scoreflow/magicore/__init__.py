"""MAgICoRE: multi-agent, iterative, coarse-to-fine refinement with reward models (the MAgICoRE
paper; scoreflow/PAPERS.md §M).

    answers.py     the answer of a chain, per dataset (reusing scoreflow.tasks)
    reward.py      ORM/PRM interfaces, split_steps
    local_rm.py    LocalLMRewardModel (a Math-Shepherd style causal LM, run here)
    value_head_rm.py  ValueHeadRewardModel (a *ForSequenceClassification ORM, run here)
    batches.py     right-padded, length-grouped batches for those two
    judge_rm.py    JudgeRewardModel (an LLM judge as ORM and PRM, over an OpenAI-compatible API)
    difficulty.py  scored chains, the two easy/hard conditions (the paper's rule and the
                   reference's), the RM-weighted vote, top-k
    agents.py      Solver / Reviewer / Refiner prompts and calls, and the ablations' variants
    loop.py        classify -> (vote | review + refine + rescore + top-k), T iterations; ablations
    baselines.py   Best-of-k, self-consistency, weighted SC, Self-Refine, Self-Refine + SC, and
                   the budget-matched Best-of-N and N-way SC
    runner.py      a resumable run over a dataset;  report.py  its tables and figures
    sweep.py       accuracy against k (--k-sweep)
    workflow_operator.py  MagicoreRefine, a ScoreFlow workflow operator (a plugin the workflow
                   runtime imports by name; the only module here that knows of workflows)
    __main__.py    python -m scoreflow.magicore

Exports are imported on first use (scoreflow/lazy.py).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents": ("Agents", "Ledger", "Sampling"),
    "answers": ("DATASETS", "FORMATS", "OPEN_MATH", "AnswerFormat", "answer_format"),
    "baselines": ("BASELINES", "MethodResult", "chain_baselines", "matched_baselines", "refine_baselines",
                  "self_refine"),
    "difficulty": ("RULES", "Chain", "Difficulty", "RewardStats", "best_by_orm", "classify", "confidence",
                   "dataset_stats", "majority", "top_k", "weighted_vote"),
    "judge_rm": ("JudgeRewardModel",),
    "loop": ("ABLATIONS", "MagicoreConfig", "Round", "Trace", "refine_until_easy", "score_chains", "solve"),
    "local_rm": ("LocalLMRewardModel", "RewardLayout"),
    "value_head_rm": ("ValueHeadRewardModel",),
    "reward": ("OutcomeRewardModel", "ProcessRewardModel", "RewardModels", "split_steps"),
    "runner": ("MagicoreRunConfig", "Runner"),
    "sweep": ("k_sweep", "parse_ks"),
})
