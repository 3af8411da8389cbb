"""MAgICoRE's coarse-to-fine loop for one question (SPEC B).

    chains_0 = k Solver chains, each scored by the ORM and the PRM
    for t = 0, 1, ..., T:
        d_t      = classify(chains_t)                     difficulty.py: both conditions
        answer_t = weighted_vote(chains_t)                each chain votes ORM + PRM-product
        stop if d_t is easy, or t = T
        for each chain i (separate calls, concurrently):
            feedback_i = Reviewer(chain_i with its PRM step scores)
            new_i      = Refiner(chain_i, feedback_i)
        chains_{t+1} = top_k(chains_t + score(new), k)    by ORM + PRM-product

An easy question is answered at once by the vote (coarse); a hard one is refined (fine)
until it becomes easy or T refinements were made. answer_t is what the method would answer
after t refinements; a question that stopped early keeps its answer for later t.

Where this differs from the reference code (refine.py), on purpose (SPEC C):
- The majority and both conditions are recomputed on the current chains at every
  iteration. The reference fixes the majority once, from the Solver chains.
- The top k of the 2k old + new chains are what the next iteration classifies and refines.
  The reference ranks the top k only to vote; it refines the k new chains next time, and a
  question that is not refined in an iteration is reset to its iteration-0 chains (so an
  answer improved earlier can be lost later).
- Chains without a readable answer are kept and ranked, but neither form an answer group nor
  vote (the reference votes for a "N/A"-like key in condition 2 and gives such chains a PRM
  of 0).
Normalisation (condition 1): "dataset" uses the reference's statistics (each question's first
Solver chain, over the dataset), given by the caller; "question" uses the mean and std of the
question's current chains.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Sequence

from .agents import Agents, Ledger
from .answers import AnswerFormat
from .difficulty import Chain, Difficulty, RewardStats, classify, top_k, weighted_vote
from .reward import RewardModels

Normalization = Literal["dataset", "question"]
# The paper's ablations: "none" is MAgICoRE itself; refine-all treats every question as hard;
# cond1-only / cond2-only call a question easy on one condition alone; no-review skips the
# Reviewer, so the Refiner rewrites each chain with neither feedback nor step scores.
ABLATIONS = ("none", "refine-all", "cond1-only", "cond2-only", "no-review")


@dataclass(frozen=True)
class MagicoreConfig:
    """Defaults are the reference's: k = 40 chains, T = 3 refinement iterations (sampling
    settings live in agents.Sampling)."""

    k: int = 40
    iterations: int = 3
    normalization: Normalization = "dataset"
    ablation: str = "none"  # one of ABLATIONS

    def __post_init__(self):
        if self.k < 1 or self.iterations < 0:
            raise ValueError(f"need k >= 1 and iterations >= 0, got k={self.k}, iterations={self.iterations}")
        if self.normalization not in ("dataset", "question"):
            raise ValueError(f"normalization must be 'dataset' or 'question', got {self.normalization!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")

    def hard(self, difficulty: Difficulty) -> bool:
        """Whether the question is refined: neither condition holds (MAgICoRE), or as the ablation says."""
        easy = {"none": difficulty.easy, "no-review": difficulty.easy, "refine-all": False,
                "cond1-only": difficulty.condition1, "cond2-only": difficulty.condition2}[self.ablation]
        return not easy


@dataclass(frozen=True)
class Round:
    """Iteration t: the classification and vote on the chains after t refinements, and the
    LLM calls spent on the question up to that vote (Solver included)."""

    iteration: int
    answer: str | None
    hard: bool
    difficulty: Difficulty
    calls: int
    tokens: int


@dataclass(frozen=True)
class Trace:
    rounds: tuple[Round, ...]   # iterations 0 .. last classified (stops at the first easy one)
    chains: tuple[Chain, ...]   # the final k chains
    scored: int                 # chains the reward models scored (Solver's included)

    @property
    def answer(self) -> str | None:
        return self.rounds[-1].answer


async def score_chains(rms: RewardModels, answer_format: AnswerFormat, question: str, texts: list[str],
                       origin: int, known: Sequence[str] = ()) -> list[Chain]:
    """Chains of `texts` with their answers (unified with `known`) and ORM/PRM scores."""
    answers = answer_format.answers(texts, known)
    orm, prm = await asyncio.gather(rms.orm.orm(question, texts), rms.prm.prm_batch(question, texts))
    if len(orm) != len(texts) or len(prm) != len(texts):
        raise ValueError(f"reward models returned {len(orm)} ORM and {len(prm)} PRM scores for {len(texts)} chains")
    if not all(0.0 <= x <= 1.0 for x in orm) or not all(p and all(0.0 <= x <= 1.0 for x in p) for p in prm):
        raise ValueError(f"reward scores must lie in [0, 1] (and a PRM gives >= 1 step score): {orm}, {prm}")
    return [Chain(t, a, o, tuple(p), origin) for t, a, o, p in zip(texts, answers, orm, prm)]


async def solve(agents: Agents, rms: RewardModels, question: str, k: int) -> tuple[list[Chain], list[Ledger]]:
    """k scored Solver chains and what each chain's call cost."""
    ledgers = [Ledger() for _ in range(k)]
    texts = await asyncio.gather(*(agents.solve(question, i, ledgers[i]) for i in range(k)))
    return await score_chains(rms, agents.answer_format, question, list(texts), origin=0), ledgers


async def refine_until_easy(agents: Agents, rms: RewardModels, question: str, chains: list[Chain],
                            config: MagicoreConfig, stats: RewardStats | None, ledger: Ledger) -> Trace:
    """The loop of the module docstring from scored chains on. `stats` None: per-question
    normalisation. `ledger` holds the Solver's cost on entry and collects the refinement calls."""
    rounds: list[Round] = []
    scored = len(chains)
    for t in range(config.iterations + 1):
        difficulty = classify(chains, stats or RewardStats.of(c.reward for c in chains))
        hard = config.hard(difficulty)
        rounds.append(Round(t, weighted_vote(chains), hard, difficulty, ledger.calls, ledger.tokens))
        if not hard or t == config.iterations:
            break
        review = config.ablation != "no-review"
        texts = await asyncio.gather(*(agents.review_and_refine(question, c.text, list(c.prm), ledger, t + 1, i,
                                                                review=review) for i, c in enumerate(chains)))
        known = [c.answer for c in chains if c.answer is not None]
        new = await score_chains(rms, agents.answer_format, question, list(texts), origin=t + 1, known=known)
        scored += len(new)
        chains = top_k(chains + new, config.k)
    return Trace(tuple(rounds), tuple(chains), scored)
