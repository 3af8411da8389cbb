"""The baselines the MAgICoRE paper compares with, on the SAME Solver chains where they use them.

    best_of_k           the answer of the chain with the highest ORM score (among chains with an answer)
    self_consistency    k-way majority vote over the chains' answers
    weighted_sc         RM-weighted vote: each chain adds ORM + PRM-product to its answer
                        (= MAgICoRE's answer at iteration 0)
    self_refine         Solver chain 0, then R rounds of critique (the Reviewer without step
                        scores) + rewrite (the Refiner); the answer after every round r = 0..R
    self_refine_sc      every Solver chain self-refined the same way, then a majority vote,
                        after every round r = 0..R (round 0: self-consistency)
Budget-matched (`matched_baselines`; the paper gives its baselines N = 120 samples against
MAgICoRE's k = 40):
    best_of_n           Best-of-N by the ORM over N Solver samples of their own (sample stream 1,
                        agents.py), not MAgICoRE's chains
    self_consistency_n  N-way majority vote over those same N samples

Self-Refine runs a fixed R rounds (the run's default: MAgICoRE's T, so that round r compares
with MAgICoRE's iteration r, as the paper's figure of accuracy per iteration does) rather than
stopping when the critic is satisfied: a fixed budget is comparable across questions and
models, and small models rarely say "no errors" reliably. No reward model is involved.
Cost: a method is charged for the calls its answer depends on, Solver chains included
(best_of_k, self_consistency, weighted_sc: the k Solver calls; self_refine after round r:
chain 0's call plus 2r; self_refine_sc: k (1 + 2r); the budget-matched ones: N Solver calls).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from functools import reduce

from .agents import Agents, Ledger
from .difficulty import Chain, best_by_orm, majority, most_common, weighted_vote
from .loop import solve
from .reward import RewardModels

CHAIN_BASELINES = ("best_of_k", "self_consistency", "weighted_sc")
REFINE_BASELINES = ("self_refine", "self_refine_sc")
MATCHED_BASELINES = ("best_of_n", "self_consistency_n")
BASELINES = CHAIN_BASELINES + REFINE_BASELINES + MATCHED_BASELINES
MATCHED_STREAM = 1  # the Solver sample stream of the budget-matched baselines


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


def _voted(chains: list[Chain]) -> dict[str, str | None]:
    """Best-of, self-consistency and weighted SC answers over `chains`."""
    best = best_by_orm(chains)
    return {"best": best.answer if best else None, "sc": majority(chains), "weighted": weighted_vote(chains)}


def chain_baselines(chains: list[Chain], solver: list[Ledger], names: tuple[str, ...] = CHAIN_BASELINES
                    ) -> dict[str, MethodResult]:
    """Best-of-k, self-consistency and weighted SC over the Solver chains (no further calls)."""
    voted, cost = _voted(chains), total(solver)
    answers = {"best_of_k": voted["best"], "self_consistency": voted["sc"], "weighted_sc": voted["weighted"]}
    return {name: MethodResult.of(answers[name], cost) for name in names if name in CHAIN_BASELINES}


async def matched_baselines(agents: Agents, rms: RewardModels, question: str, n: int,
                            names: tuple[str, ...] = MATCHED_BASELINES) -> dict[str, MethodResult]:
    """Best-of-N and N-way self-consistency over N Solver samples of their own."""
    wanted = [name for name in names if name in MATCHED_BASELINES]
    if not wanted:
        return {}
    chains, ledgers = await solve(agents, rms, question, n, stream=MATCHED_STREAM)
    voted, cost = _voted(chains), total(ledgers)
    answers = {"best_of_n": voted["best"], "self_consistency_n": voted["sc"]}
    return {name: MethodResult.of(answers[name], cost) for name in wanted}


async def self_refine(agents: Agents, question: str, solution: str, rounds: int, index: int
                      ) -> list[tuple[str, Ledger]]:
    """R rounds of critique + rewrite of one chain: the text and the cost so far after each
    round r = 0..R (round 0: the chain itself, no cost)."""
    ledger, history = Ledger(), [(solution, Ledger())]
    for r in range(1, rounds + 1):
        solution = await agents.review_and_refine(question, solution, None, ledger, r, index)
        history.append((solution, dataclasses.replace(ledger)))
    return history


async def refine_baselines(agents: Agents, question: str, chains: list[Chain], solver: list[Ledger], rounds: int,
                           names: tuple[str, ...] = REFINE_BASELINES) -> dict[str, list[MethodResult]]:
    """Self-Refine (chain 0) and Self-Refine + SC (all chains) after every round 0..R; chain
    0's refinement is shared."""
    wanted = [n for n in names if n in REFINE_BASELINES]
    if not wanted:
        return {}
    count = len(chains) if "self_refine_sc" in wanted else 1
    histories = await asyncio.gather(*(self_refine(agents, question, chains[i].text, rounds, i)
                                       for i in range(count)))
    known = [c.answer for c in chains if c.answer is not None]
    out: dict[str, list[MethodResult]] = {"self_refine": [], "self_refine_sc": []}
    for r in range(rounds + 1):
        answers = agents.answer_format.answers([h[r][0] for h in histories], known)
        out["self_refine"].append(MethodResult.of(answers[0], solver[0].merged(histories[0][r][1])))
        out["self_refine_sc"].append(MethodResult.of(most_common(answers),
                                                     total(solver[:count] + [h[r][1] for h in histories])))
    return {name: out[name] for name in wanted}
