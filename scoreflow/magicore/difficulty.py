"""MAgICoRE's per-question difficulty test, the RM-weighted vote and the top-k selection
(the MAgICoRE paper, its coarse-to-fine method: easy problems are aggregated, hard ones refined;
scoreflow/PAPERS.md §M).

A scored chain i has an answer a_i (None when it states none), an ORM score o_i in [0, 1]
and PRM step scores s_i1..s_in in [0, 1]; its PRM score is the product p_i = prod_j s_ij.
Answer groups G_a = {i : a_i = a}; chains without an answer belong to no group. The majority
is the largest group, G_maj; the question has k chains in all.

Condition 1 (majority quality), rule "paper" (the paper's text), for each RM separately,
w_i = o_i and w_i = p_i:
    S_avg = mean_{i in G_maj} w_i - mean_{i = 1..k} w_i,   true iff S_avg > 0 for BOTH RMs
("if either RM gives the majority a low score, condition 1 is false"). The paper normalises the
majority's mean score by the mean over all the question's solutions; we take the difference.
Dividing it by any positive spread (the question's std, say) gives the same sign, so the test
is the same; the difference needs no spread, and is defined when every score is equal (then it
is 0: condition 1 false, a majority no better than the rest).
Rule "reference" (the authors' repository, dinobby/MAgICoRE, refine.py): one combined reward
r_i = o_i + p_i, z-normalised with statistics (mu, sigma),
    z_i = (r_i - mu) / sigma,    true iff mean_{i in G_maj} z_i >= 0
with (mu, sigma) over each question's first Solver chain in the dataset (or, "question"
normalisation, over the question's own chains).

Condition 2 (RM confidence), both rules, separately for w_i = o_i and for w_i = p_i:
    W_a = sum_{i in G_a} w_i,   q_a = W_a / sum_b W_b,   H = -sum_a q_a ln q_a
    confidence = 2 (1 - sigmoid(H)),   true iff confidence >= 0.5 for BOTH RMs
(one answer: H = 0, confidence 1; two equal answers: H = ln 2, confidence 2/3; the bound
0.5 is H = ln 3, so with k <= 3 chains condition 2 always holds and no question is hard.)
A question is EASY when either condition holds, HARD otherwise. The paper's ablations that
judge with one RM (`rms=("orm",)` or `("prm",)`) apply both conditions to that RM alone.

RM-weighted vote: answer = argmax_a sum_{i in G_a} (o_i + p_i).
Top k: the k chains of highest ORM score (rule "paper": the Reviewer's feedback came from the
PRM, so selecting with the other RM avoids overfitting to it); of highest o_i + p_i
("reference").

Tie rule, everywhere (majority, vote, best chain, top-k): the earlier wins. Answers rank by
their first chain's position in the list, chains by their position; the loop lists old
chains before refined ones, so a refined chain must score strictly higher to displace one.

Edge cases: no chain with an answer -> no majority, condition 1 false, both confidences 0,
vote None. All weights of an RM zero -> its confidence 0 (no evidence). sigma ~ 0 (one
question, or identical rewards) -> z_i = r_i - mu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Iterable, Literal

Rule = Literal["paper", "reference"]
RULES = ("paper", "reference")
RMS = ("orm", "prm")
STD_FLOOR = 1e-12
MARGIN_FLOOR = 1e-9  # equal scores must not pass S_avg > 0 by a rounding error
CONFIDENCE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Chain:
    """One reasoning chain with its answer key and reward-model scores; `origin` is the
    iteration that wrote it (0: the Solver, t: the Refiner in iteration t)."""

    text: str
    answer: str | None
    orm: float
    prm: tuple[float, ...]
    origin: int = 0

    @property
    def prm_product(self) -> float:
        return math.prod(self.prm)

    @property
    def reward(self) -> float:
        """r = ORM + PRM-product."""
        return self.orm + self.prm_product

    def score(self, rm: str) -> float:
        """The chain's score by one RM: "orm" -> o, "prm" -> the PRM product."""
        return self.orm if rm == "orm" else self.prm_product


@dataclass(frozen=True)
class RewardStats:
    """Reference mean and (population) standard deviation of rewards for the reference rule."""

    mean: float
    std: float

    @classmethod
    def of(cls, rewards: Iterable[float]) -> "RewardStats":
        values = list(rewards)
        if not values:
            raise ValueError("reward statistics need at least one reward")
        mean = math.fsum(values) / len(values)
        return cls(mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values)))

    def z(self, reward: float) -> float:
        return (reward - self.mean) / (self.std if self.std > STD_FLOOR else 1.0)


def dataset_stats(first_chains: Iterable[Chain]) -> RewardStats:
    """The reference's statistics: rewards of each question's first chain, over the dataset."""
    return RewardStats.of(c.reward for c in first_chains)


def groups(chains: list[Chain]) -> dict[str, list[Chain]]:
    """Chains by answer, answers in order of first appearance; answerless chains left out."""
    out: dict[str, list[Chain]] = {}
    for chain in chains:
        if chain.answer is not None:
            out.setdefault(chain.answer, []).append(chain)
    return out


def _argmax(scores: dict[str, float]) -> str | None:
    """Key of the largest value; the first such key on ties (dicts keep insertion order)."""
    best = None
    for key, value in scores.items():
        if best is None or value > scores[best]:
            best = key
    return best


def most_common(answers: Iterable[str | None]) -> str | None:
    """The most frequent answer (None does not count; ties: the answer that appears first)."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    return _argmax(counts)


def majority(chains: list[Chain]) -> str | None:
    """Answer of the largest group (ties: the answer that appears first)."""
    return most_common(c.answer for c in chains)


def weighted_vote(chains: list[Chain]) -> str | None:
    """RM-weighted vote: each chain adds ORM + PRM-product to its answer."""
    return _argmax({a: math.fsum(c.reward for c in g) for a, g in groups(chains).items()})


def confidence(weights: Iterable[float]) -> float:
    """2 (1 - sigmoid(H)) with H the natural-log entropy of the normalised weights; 0 when the
    weights sum to 0 or there are none."""
    w = list(weights)
    total = math.fsum(w)
    if not w or total <= 0:
        return 0.0
    entropy = -math.fsum(p * math.log(p) for p in (x / total for x in w) if p > 0)
    return 2.0 * (1.0 - 1.0 / (1.0 + math.exp(-entropy)))


@dataclass(frozen=True)
class Difficulty:
    """The test's inputs and outcome for one question at one iteration. The margins (S_avg)
    and confidences are given for both RMs whatever the rule, for the record."""

    rule: Rule
    majority: str | None
    orm_margin: float | None      # S_avg of the ORM; None without a majority
    prm_margin: float | None      # S_avg of the PRM product
    majority_z: float | None      # the reference rule's mean z over the majority; None under the paper's
    orm_confidence: float
    prm_confidence: float
    condition1: bool
    condition2: bool

    @property
    def easy(self) -> bool:
        return self.condition1 or self.condition2


def classify(chains: list[Chain], rule: Rule = "paper", stats: RewardStats | None = None,
             rms: tuple[str, ...] = RMS) -> Difficulty:
    """Conditions 1 and 2 of the module docstring for one question's chains, judged by `rms`.
    `stats`: the reference rule's (mu, sigma); None: the question's own chains'."""
    if rule not in RULES:
        raise ValueError(f"difficulty rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "reference" and tuple(rms) != RMS:
        raise ValueError("the reference rule combines both RMs into one reward; judging with one RM needs the "
                         "paper's rule")
    answers = groups(chains)
    top = majority(chains)
    margin = {rm: None if top is None else
              fmean(c.score(rm) for c in answers[top]) - fmean(c.score(rm) for c in chains) for rm in RMS}
    conf = {rm: confidence(math.fsum(c.score(rm) for c in g) for g in answers.values()) for rm in RMS}
    z = None
    if rule == "paper":
        condition1 = all(margin[rm] is not None and margin[rm] > MARGIN_FLOOR for rm in rms)
    else:
        stats = stats or RewardStats.of(c.reward for c in chains)
        z = None if top is None else fmean(stats.z(c.reward) for c in answers[top])
        condition1 = z is not None and z >= 0
    return Difficulty(rule, top, margin["orm"], margin["prm"], z, conf["orm"], conf["prm"], condition1,
                      condition2=all(conf[rm] >= CONFIDENCE_THRESHOLD for rm in rms))


def top_k(chains: list[Chain], k: int, rule: Rule = "paper") -> list[Chain]:
    """The k chains of highest ORM score ("paper") or ORM + PRM-product ("reference"), best
    first (stable: ties keep list order)."""
    key = (lambda c: -c.orm) if rule == "paper" else (lambda c: -c.reward)
    return sorted(chains, key=key)[:k]


def best_by_orm(chains: list[Chain]) -> Chain | None:
    """Best-of-k: the chain with the highest ORM score among those stating an answer (all
    chains when none does; ties: the first)."""
    return max([c for c in chains if c.answer is not None] or chains, key=lambda c: c.orm, default=None)
