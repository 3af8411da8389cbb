"""Preference pairs from scored workflows (PAPERS.md §S4 steps 3–4).

    1. per question, every two workflows with different scores give a pair (w, l), s_w > s_l
       (near-template workflows are dropped before, by the loop: optimize/stages.py, with
       workflow/validate.py's template_similarity on the run_workflow body);
    2. P(w, l) is uniform over all pairs of all questions;
    3. P*(w, l) ∝ d(s_w, s_l) P(w, l), with d(x, y) = (x − y)^3 by default;
    4. either draw N pairs from P* with replacement (the paper: N = 2000) — each draw has
       weight 1/N — or keep every pair once with weight P*(w, l). Both give the same
       expected Score-DPO gradient; the weights of a returned list always sum to 1.

The weights reach training as λ in the trainer's Σλℓ (the losses return ℓ per pair), so a
batch of one pair keeps its weight.
No input, or no valid pair, gives an empty list, never an error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterable

import numpy as np

ScoreGap = Callable[[float, float], float]


@dataclass(frozen=True)
class ScoredWorkflow:
    """One generated workflow and its mean evaluator score s ∈ [0, 1]."""

    id: str
    question_id: str
    score: float


@dataclass(frozen=True)
class PreferencePair:
    """Winner w beats loser l (s_w > s_l) on one question; `weight` is its probability mass."""

    winner_id: str
    loser_id: str
    question_id: str
    s_w: float
    s_l: float
    weight: float


def cubic_gap(x: float, y: float) -> float:
    """d(x, y) = (x − y)^3, the paper's d: > 0 for x > y, strictly increasing in x − y."""
    return (x - y) ** 3


def uniform_gap(x: float, y: float) -> float:
    """d ≡ 1: P* = P, every pair equally likely (plain DPO's sampling, the paper's ablation)."""
    return 1.0


GAPS: dict[str, ScoreGap] = {"cubic": cubic_gap, "uniform": uniform_gap}


def build_pairs(workflows: Iterable[ScoredWorkflow]) -> list[PreferencePair]:
    """All pairs (w, l) with s_w > s_l within each question, weighted by uniform P.

    Ties and single-workflow questions give no pair. Order: questions and workflows as given.
    """
    by_question: dict[str, list[ScoredWorkflow]] = defaultdict(list)
    seen: set[str] = set()
    for wf in workflows:
        if wf.id in seen:
            raise ValueError(f"duplicate workflow id {wf.id!r}; ids must be unique")
        if not 0 <= wf.score <= 1:  # also rejects NaN
            raise ValueError(f"workflow {wf.id!r} has score {wf.score}; scores must lie in [0, 1]")
        seen.add(wf.id)
        by_question[wf.question_id].append(wf)
    ordered = [(winner, loser) for group in by_question.values()
               for winner in group for loser in group if winner.score > loser.score]
    return [PreferencePair(winner.id, loser.id, winner.question_id, winner.score, loser.score,
                           weight=1.0 / len(ordered))
            for winner, loser in ordered]


def target_distribution(pairs: list[PreferencePair], d: ScoreGap = cubic_gap) -> np.ndarray:
    """P*(w, l) = d(s_w, s_l) P(w, l) / Σ d P, with P the pairs' weights; (M,) float64."""
    gaps = np.array([d(p.s_w, p.s_l) for p in pairs], dtype=np.float64)  # (M,)
    valid = np.isfinite(gaps) & (gaps > 0)
    if not valid.all():
        bad = pairs[int(np.flatnonzero(~valid)[0])]
        raise ValueError(f"d must be finite and > 0 whenever s_w > s_l; "
                         f"got d({bad.s_w}, {bad.s_l}) = {gaps[~valid][0]}")
    mass = gaps * np.array([p.weight for p in pairs], dtype=np.float64)  # (M,)
    return mass / mass.sum()


def sample_pairs(
    pairs: list[PreferencePair],
    num_samples: int = 2000,
    d: ScoreGap = cubic_gap,
    seed: int = 0,
) -> list[PreferencePair]:
    """N draws with replacement from P* (numpy Generator seeded with `seed`), weight 1/N each."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    if not pairs:
        return []
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(pairs), size=num_samples, replace=True, p=target_distribution(pairs, d))
    return [replace(pairs[i], weight=1.0 / num_samples) for i in drawn]


def exact_pairs(pairs: list[PreferencePair], d: ScoreGap = cubic_gap) -> list[PreferencePair]:
    """Every pair once, with weight P*(w, l): the expectation that sample_pairs estimates."""
    if not pairs:
        return []
    return [replace(p, weight=float(w)) for p, w in zip(pairs, target_distribution(pairs, d))]


def pairs_to_records(pairs: Iterable[PreferencePair]) -> list[dict]:
    """JSON-serialisable dicts, one per pair (a line of pairs.jsonl)."""
    return [asdict(p) for p in pairs]


def pairs_from_records(records: Iterable[dict]) -> list[PreferencePair]:
    """Inverse of pairs_to_records; ValueError on missing or unknown keys."""
    expected = {f.name for f in fields(PreferencePair)}
    pairs = []
    for i, record in enumerate(records):
        if set(record) != expected:
            raise ValueError(f"record {i} has keys {sorted(record)}; expected {sorted(expected)}")
        pairs.append(PreferencePair(**record))
    return pairs
