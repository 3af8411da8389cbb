"""Preference pairs: pairing, P* sampling, exact weights, records (the near-template filter is the
loop's, on the workflow body: tests/e2e/test_fidelity.py)."""

import json

import numpy as np
import pytest
import torch

from scoreflow.dpo import (
    GAPS,
    PreferencePair,
    ScoredWorkflow,
    build_pairs,
    cubic_gap,
    exact_pairs,
    pairs_from_records,
    pairs_to_records,
    sample_pairs,
    score_dpo_loss,
    target_distribution,
)


def wf(id, score, question_id="q1"):
    return ScoredWorkflow(id=id, question_id=question_id, score=score)


WORKFLOWS = [
    wf("a", 0.9), wf("b", 0.5), wf("c", 0.5), wf("d", 0.1),  # q1: b, c tie
    wf("e", 1.0, "q2"),  # q2: a single workflow
    wf("f", 0.3, "q3"), wf("g", 0.3, "q3"),  # q3: a tie only
    wf("h", 0.6, "q4"), wf("i", 0.0, "q4"),  # q4: one pair
]


def test_pairs_by_hand():
    pairs = build_pairs(WORKFLOWS)
    got = {(p.winner_id, p.loser_id, p.question_id, p.s_w, p.s_l) for p in pairs}
    assert got == {
        ("a", "b", "q1", 0.9, 0.5), ("a", "c", "q1", 0.9, 0.5), ("a", "d", "q1", 0.9, 0.1),
        ("b", "d", "q1", 0.5, 0.1), ("c", "d", "q1", 0.5, 0.1), ("h", "i", "q4", 0.6, 0.0),
    }
    assert len(pairs) == 6
    assert all(p.weight == pytest.approx(1 / 6) for p in pairs)  # P uniform over all questions' pairs


def test_no_pairs_gives_empty_lists():
    assert build_pairs([]) == []
    assert build_pairs([wf("e", 1.0), wf("f", 1.0)]) == []
    assert sample_pairs([]) == []
    assert exact_pairs([]) == []


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="duplicate workflow id 'a'"):
        build_pairs([wf("a", 0.1), wf("a", 0.2)])
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        build_pairs([wf("a", 1.2)])
    with pytest.raises(ValueError, match="num_samples"):
        sample_pairs(build_pairs(WORKFLOWS), num_samples=0)


def test_exact_weights_are_p_star():
    pairs = build_pairs(WORKFLOWS)
    exact = exact_pairs(pairs)
    gaps = np.array([(p.s_w - p.s_l) ** 3 for p in pairs])
    assert [(p.winner_id, p.loser_id) for p in exact] == [(p.winner_id, p.loser_id) for p in pairs]
    np.testing.assert_allclose([p.weight for p in exact], gaps / gaps.sum(), rtol=1e-12)
    assert sum(p.weight for p in exact) == pytest.approx(1.0, abs=1e-12)


def test_d_is_configurable():
    pairs = build_pairs(WORKFLOWS)
    linear = target_distribution(pairs, d=lambda x, y: x - y)
    gaps = np.array([p.s_w - p.s_l for p in pairs])
    np.testing.assert_allclose(linear, gaps / gaps.sum(), rtol=1e-12)
    assert not np.allclose(linear, target_distribution(pairs))  # the default (cubic) differs
    with pytest.raises(ValueError, match="d must be finite and > 0"):
        exact_pairs(pairs, d=lambda x, y: y - x)
    uniform = target_distribution(pairs, GAPS["uniform"])  # plain DPO's P*: P itself
    np.testing.assert_allclose(uniform, [p.weight for p in pairs], rtol=1e-12)
    assert GAPS["cubic"] is cubic_gap


def test_sampling_frequencies_match_p_star():
    pairs = build_pairs(WORKFLOWS)
    p_star = target_distribution(pairs)
    n = 100_000
    drawn = sample_pairs(pairs, num_samples=n, seed=1)
    index = {(p.winner_id, p.loser_id): i for i, p in enumerate(pairs)}
    counts = np.bincount([index[(p.winner_id, p.loser_id)] for p in drawn], minlength=len(pairs))
    chi2 = ((counts - n * p_star) ** 2 / (n * p_star)).sum()
    dof = len(pairs) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof)  # ~6 sigma above the chi-square mean; uniform P gives > 1e4
    assert all(p.weight == 1 / n for p in drawn)


def test_sampling_is_seeded():
    pairs = build_pairs(WORKFLOWS)
    assert sample_pairs(pairs, seed=3) == sample_pairs(pairs, seed=3)
    assert sample_pairs(pairs, seed=3) != sample_pairs(pairs, seed=4)


def test_defaults_are_the_papers():
    pairs = build_pairs(WORKFLOWS)
    assert len(sample_pairs(pairs)) == 2000
    assert cubic_gap(0.9, 0.4) == pytest.approx(0.125)
    np.testing.assert_allclose(target_distribution(pairs), target_distribution(pairs, d=cubic_gap))


def test_sampled_and_exact_pairs_give_the_same_expected_loss():
    pairs = build_pairs(WORKFLOWS)
    ids = sorted({p.winner_id for p in pairs} | {p.loser_id for p in pairs})
    logp = dict(zip(ids, torch.linspace(-3.0, 3.0, len(ids), dtype=torch.float64)))

    def loss(chosen):
        pc = torch.stack([logp[p.winner_id] for p in chosen])
        pr = torch.stack([logp[p.loser_id] for p in chosen])
        zeros = torch.zeros_like(pc)
        s_w = torch.tensor([p.s_w for p in chosen], dtype=torch.float64)
        s_l = torch.tensor([p.s_l for p in chosen], dtype=torch.float64)
        weights = torch.tensor([p.weight for p in chosen], dtype=torch.float64)
        return (weights * score_dpo_loss(pc, pr, zeros, zeros, s_w, s_l, beta=1.0)).sum() / weights.sum()

    exact = loss(exact_pairs(pairs))
    sampled = loss(sample_pairs(pairs, num_samples=20_000, seed=5))
    uniform = loss(pairs)  # P instead of P*: must differ, or the test proves nothing
    assert abs(sampled - exact) < 0.01 < abs(uniform - exact)


def test_records_round_trip_through_json():
    pairs = sample_pairs(build_pairs(WORKFLOWS), num_samples=5)
    lines = [json.dumps(r) for r in pairs_to_records(pairs)]
    assert pairs_from_records(json.loads(line) for line in lines) == pairs
    with pytest.raises(ValueError, match="record 0"):
        pairs_from_records([{"winner_id": "a"}])
    assert isinstance(pairs[0], PreferencePair)
