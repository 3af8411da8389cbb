"""MAgICoRE's coarse-to-fine loop for one question, as the MAgICoRE paper describes it
(scoreflow/PAPERS.md §M).

    Solver: k chains S_0, each scored by the ORM and the PRM
    kept_0 = S_0
        |
        v
    t = 0, 1, ..., T:                                         (classify and vote on kept_t)
    +-> d_t = classify(kept_t)             difficulty.py: the majority and both conditions,
    |   answer_t = weighted_vote(kept_t)   recomputed at every iteration
    |   easy, or t = T?  -- yes --> answer_t
    |       | no (hard)
    |       v
    |   PRM step scores of S_t --> Reviewer: feedback per chain   (separate calls, concurrently)
    |       |
    |       v
    |   Refiner: S_{t+1} = k chains rewritten with that feedback, scored by the ORM and the PRM
    |       |
    |       v
    |   kept_{t+1} = top k of the 2k chains S_t + S_{t+1} by ORM score
    +---S_{t+1} goes back to the Reviewer in the next round

The Refiner's output is what the next round reviews (S_t: the chains round t wrote); the top k
of the 2k old + new chains decide the vote and the difficulty test. Ranking by the ORM, not by
the PRM whose scores guided the feedback, keeps the selection from overfitting to the PRM
(the paper). An easy question is answered at once by the vote (coarse); a hard one is refined
(fine) until it becomes easy or T refinements were made. answer_t is what the method would
answer after t refinements; a question that stopped early keeps its answer for later t.

Rule "reference" (difficulty.py, the authors' repository) keeps the reference's combined
ranking (ORM + PRM product) for the top k and its condition 1; the flow above is the same.
Where the flow differs from the reference code (refine.py), on purpose:
- The difficulty test runs on kept_t, the chains that vote (the paper); the reference tests the
  k newest chains S_t, and fixes the majority once, from the Solver chains.
- A question that is easy at some iteration stops there: the reference resets such a question
  to its iteration-0 chains, so an answer improved earlier can be lost later.
- Chains without a readable answer are kept and ranked, but neither form an answer group nor
  vote (the reference votes for a "N/A"-like key in condition 2 and gives such chains a PRM
  of 0).

The paper's ablations (`MagicoreConfig.ablation`), each changing one thing:
    refine-all      every question is hard (no coarse/fine split; refined T times)
    cond1-only      easy on condition 1 alone;   cond2-only  on condition 2 alone
    orm-only        both conditions judged by the ORM alone;   prm-only  by the PRM alone
    llm-difficulty  the Solver's model is asked once whether the question is hard; its verdict
                    holds for every iteration (the question does not change)
    no-review       the Refiner rewrites without any Reviewer, feedback or step scores
    llm-feedback    the Reviewer writes feedback without step scores (LLM self-feedback)
    joint-role      one agent reviews and rewrites in one call (with step scores)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Literal, Sequence

from .agents import NO_REVIEW, Agents, Ledger
from .answers import AnswerFormat
from .difficulty import RMS, RULES, Chain, Difficulty, RewardStats, Rule, classify, top_k, weighted_vote
from .reward import RewardModels

Normalization = Literal["dataset", "question"]
ABLATIONS = ("none", "refine-all", "cond1-only", "cond2-only", "orm-only", "prm-only", "llm-difficulty",
             "no-review", "llm-feedback", "joint-role")
_JUDGED_BY = {"orm-only": ("orm",), "prm-only": ("prm",)}


@dataclass(frozen=True)
class MagicoreConfig:
    """Defaults are the paper's: k = 40 chains, T = 3 refinement iterations, its difficulty rule
    (sampling settings live in agents.Sampling). `normalization` is the reference rule's
    condition-1 statistics: each question's first chain over the dataset ("dataset", given by
    the caller), or the question's own chains ("question"); the paper's rule needs none."""

    k: int = 40
    iterations: int = 3
    normalization: Normalization = "dataset"
    ablation: str = "none"  # one of ABLATIONS
    difficulty_rule: Rule = "paper"

    def __post_init__(self):
        if self.k < 1 or self.iterations < 0:
            raise ValueError(f"need k >= 1 and iterations >= 0, got k={self.k}, iterations={self.iterations}")
        if self.normalization not in ("dataset", "question"):
            raise ValueError(f"normalization must be 'dataset' or 'question', got {self.normalization!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        if self.difficulty_rule not in RULES:
            raise ValueError(f"difficulty rule must be one of {', '.join(RULES)}, got {self.difficulty_rule!r}")
        if self.ablation in _JUDGED_BY and self.difficulty_rule == "reference":
            raise ValueError(f"ablation {self.ablation} judges with one RM, which the reference rule's combined "
                             "reward cannot; use --difficulty-rule paper")

    def classify(self, chains: list[Chain], stats: RewardStats | None) -> Difficulty:
        """difficulty.classify under this config's rule, by the RMs its ablation keeps."""
        return classify(chains, self.difficulty_rule, stats, _JUDGED_BY.get(self.ablation, RMS))

    def hard(self, difficulty: Difficulty) -> bool:
        """Whether the question is refined: neither condition holds (MAgICoRE), or as the ablation says."""
        easy = {"refine-all": False, "cond1-only": difficulty.condition1,
                "cond2-only": difficulty.condition2}.get(self.ablation, difficulty.easy)
        return not easy


@dataclass(frozen=True)
class Round:
    """Iteration t: the classification and vote on the kept chains after t refinements, and
    the LLM calls spent on the question up to that vote (Solver included)."""

    iteration: int
    answer: str | None
    hard: bool
    difficulty: Difficulty
    calls: int
    tokens: int


@dataclass(frozen=True)
class Trace:
    rounds: tuple[Round, ...]   # iterations 0 .. last classified (stops at the first easy one)
    chains: tuple[Chain, ...]   # the final kept k chains (what the last vote counted)
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


async def solve(agents: Agents, rms: RewardModels, question: str, k: int, stream: int = 0
                ) -> tuple[list[Chain], list[Ledger]]:
    """k scored Solver chains (of sample stream `stream`, agents.py) and what each chain's call cost."""
    ledgers = [Ledger() for _ in range(k)]
    texts = await asyncio.gather(*(agents.solve(question, i, ledgers[i], stream) for i in range(k)))
    return await score_chains(rms, agents.answer_format, question, list(texts), origin=0), ledgers


def _rewrite(agents: Agents, ablation: str, question: str, chain: Chain, ledger: Ledger, iteration: int,
             index: int) -> Awaitable[str]:
    """One chain's review + rewrite as the ablation has it."""
    if ablation == "no-review":
        return agents.refine(question, chain.text, None, NO_REVIEW, ledger, iteration, index)
    if ablation == "joint-role":
        return agents.review_and_refine_jointly(question, chain.text, list(chain.prm), ledger, iteration, index)
    scores = None if ablation == "llm-feedback" else list(chain.prm)
    return agents.review_and_refine(question, chain.text, scores, ledger, iteration, index)


async def refine_until_easy(agents: Agents, rms: RewardModels, question: str, chains: list[Chain],
                            config: MagicoreConfig, stats: RewardStats | None, ledger: Ledger) -> Trace:
    """The loop of the module docstring from the k scored Solver chains on. `stats`: the
    reference rule's statistics (None: per question). `ledger` holds the Solver's cost on
    entry and collects the later calls."""
    verdict = await agents.judges_hard(question, ledger) if config.ablation == "llm-difficulty" else None
    rounds: list[Round] = []
    kept = reviewed = chains
    scored = len(chains)
    for t in range(config.iterations + 1):
        difficulty = config.classify(kept, stats)
        hard = config.hard(difficulty) if verdict is None else verdict
        rounds.append(Round(t, weighted_vote(kept), hard, difficulty, ledger.calls, ledger.tokens))
        if not hard or t == config.iterations:
            break
        texts = await asyncio.gather(*(_rewrite(agents, config.ablation, question, c, ledger, t + 1, i)
                                       for i, c in enumerate(reviewed)))
        known = [c.answer for c in (*kept, *reviewed) if c.answer is not None]
        new = await score_chains(rms, agents.answer_format, question, list(texts), origin=t + 1, known=known)
        scored += len(new)
        kept, reviewed = top_k(reviewed + new, config.k, config.difficulty_rule), new
    return Trace(tuple(rounds), tuple(kept), scored)
