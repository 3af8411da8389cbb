"""The baselines MAgICoRE is compared with (SPEC B), on the SAME Solver chains where they use them.

    best_of_k         the answer of the chain with the highest ORM score (among chains with an answer)
    self_consistency  k-way majority vote over the chains' answers
    weighted_sc       RM-weighted vote: each chain adds ORM + PRM-product to its answer
                      (= MAgICoRE's answer at iteration 0)
    self_refine       Solver chain 0, then R rounds of critique (the Reviewer without step
                      scores) + rewrite (the Refiner); the answer of the last rewrite
    self_refine_sc    every Solver chain self-refined the same way, then a majority vote

Self-Refine runs a fixed R rounds (default 2, as ScoreFlow's baseline in SPEC A6) rather than
stopping when the critic is satisfied: a fixed budget is comparable across questions and
models, and small models rarely say "no errors" reliably. No reward model is involved.
Cost: a method is charged for the calls its answer depends on, Solver chains included
(best_of_k, self_consistency, weighted_sc: the k Solver calls; self_refine: chain 0's call
plus 2R; self_refine_sc: k (1 + 2R)).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import reduce

from .agents import Agents, Ledger
from .difficulty import Chain, best_by_orm, majority, most_common, weighted_vote

CHAIN_BASELINES = ("best_of_k", "self_consistency", "weighted_sc")
REFINE_BASELINES = ("self_refine", "self_refine_sc")
BASELINES = CHAIN_BASELINES + REFINE_BASELINES
SELF_REFINE_ROUNDS = 2


@dataclass(frozen=True)
class MethodResult:
    """One method's answer to one question and what it cost."""

    answer: str | None
    calls: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, answer: str | None, ledger: Ledger) -> "MethodResult":
        return cls(answer, ledger.calls, ledger.prompt_tokens, ledger.completion_tokens)


def total(ledgers: list[Ledger]) -> Ledger:
    return reduce(Ledger.merged, ledgers, Ledger())


def chain_baselines(chains: list[Chain], solver: list[Ledger], names: tuple[str, ...] = CHAIN_BASELINES
                    ) -> dict[str, MethodResult]:
    """Best-of-k, self-consistency and weighted SC over the Solver chains (no further calls)."""
    best = best_by_orm(chains)
    answers = {"best_of_k": best.answer if best else None, "self_consistency": majority(chains),
               "weighted_sc": weighted_vote(chains)}
    cost = total(solver)
    return {name: MethodResult.of(answers[name], cost) for name in names if name in CHAIN_BASELINES}


async def self_refine(agents: Agents, question: str, solution: str, rounds: int, ledger: Ledger, index: int) -> str:
    """R rounds of critique + rewrite of one chain."""
    for r in range(1, rounds + 1):
        solution = await agents.review_and_refine(question, solution, None, ledger, r, index)
    return solution


async def refine_baselines(agents: Agents, question: str, chains: list[Chain], solver: list[Ledger],
                           names: tuple[str, ...] = REFINE_BASELINES, rounds: int = SELF_REFINE_ROUNDS
                           ) -> dict[str, MethodResult]:
    """Self-Refine (chain 0) and Self-Refine + SC (all chains); chain 0's refinement is shared."""
    wanted = [n for n in names if n in REFINE_BASELINES]
    if not wanted:
        return {}
    count = len(chains) if "self_refine_sc" in wanted else 1
    ledgers = [Ledger() for _ in range(count)]
    texts = await asyncio.gather(*(self_refine(agents, question, chains[i].text, rounds, ledgers[i], i)
                                   for i in range(count)))
    answers = agents.answer_format.answers(list(texts), [c.answer for c in chains if c.answer is not None])
    out = {"self_refine": MethodResult.of(answers[0], solver[0].merged(ledgers[0])),
           "self_refine_sc": MethodResult.of(most_common(answers), total(solver[:count] + ledgers))}
    return {name: out[name] for name in wanted}
