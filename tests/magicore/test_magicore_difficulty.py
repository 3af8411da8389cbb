"""MAgICoRE's difficulty conditions (the paper's rule and the reference's), RM-weighted vote,
top k, tie rules and answer grouping, on hand-computed cases. Chain(text, answer, ORM, PRM
steps): PRM score prod(PRM), reward r = ORM + prod(PRM)."""

import math
import random

import pytest

from scoreflow.magicore import (FORMATS, Chain, RewardStats, best_by_orm, classify, confidence, dataset_stats,
                                majority, top_k, weighted_vote)
from scoreflow.tasks.base import AnswerTask, Question
from scoreflow.tasks.magicore_sets import check_option


def chain(answer, orm, *prm, text=""):
    return Chain(text or f"chain for {answer}", answer, orm, tuple(prm))


STATS = RewardStats(mean=1.0, std=0.5)


def test_reward_is_orm_plus_prm_product():
    c = chain("7", 0.9, 0.9, 0.8)
    assert c.prm_product == pytest.approx(0.72) and c.reward == pytest.approx(1.62)  # 0.9 + 0.9 * 0.8
    assert (c.score("orm"), c.score("prm")) == (0.9, pytest.approx(0.72))


def test_paper_condition1_compares_the_majority_with_all_chains_for_each_rm():
    chains = [chain("7", 0.9, 0.9, 0.8),   # ORM 0.9, PRM 0.72
              chain("7", 0.5, 0.5),        # ORM 0.5, PRM 0.5
              chain("3", 0.2, 0.1)]        # ORM 0.2, PRM 0.1 (not in the majority)
    d = classify(chains, "paper")
    # ORM: mean(0.9, 0.5) - mean(0.9, 0.5, 0.2) = 0.7 - 0.5333 = 0.1667
    # PRM: mean(0.72, 0.5) - mean(0.72, 0.5, 0.1) = 0.61 - 0.44 = 0.17
    assert d.majority == "7" and d.orm_margin == pytest.approx(1 / 6) and d.prm_margin == pytest.approx(0.17)
    assert d.majority_z is None and d.condition1 and d.easy


def test_majority_that_only_the_orm_likes_is_hard_by_the_paper_and_easy_by_the_reference():
    # the majority "7": ORM 0.9 but PRM 0.1; three other answers: ORM 0.2, PRM 0.6
    chains = [chain("7", 0.9, 0.1), chain("7", 0.9, 0.1), chain("3", 0.2, 0.6), chain("4", 0.2, 0.6),
              chain("5", 0.2, 0.6)]
    paper = classify(chains, "paper")
    # ORM: 0.9 - 2.4 / 5 = 0.42 > 0;  PRM: 0.1 - 2.0 / 5 = -0.3 < 0: condition 1 false
    assert paper.orm_margin == pytest.approx(0.42) and paper.prm_margin == pytest.approx(-0.3)
    # PRM per answer (0.2, 0.6, 0.6, 0.6): H = 1.313834, confidence 0.423692 < 0.5 (the ORM's: 0.604339)
    assert paper.prm_confidence == pytest.approx(0.423692, abs=1e-6) and paper.orm_confidence > 0.5
    assert not paper.condition1 and not paper.condition2 and not paper.easy
    # the reference's combined reward: 7 -> 1.0, the others 0.8; z = (1.0 - 0.9) / 0.1 = 1 >= 0
    reference = classify(chains, "reference", RewardStats(0.9, 0.1))
    assert reference.majority_z == pytest.approx(1.0) and reference.condition1 and reference.easy
    assert classify(chains, "reference").easy  # the question's own statistics: mean 0.88, z > 0 too
    # judged by one RM (the orm-only / prm-only ablations): the ORM alone calls it easy
    assert classify(chains, "paper", rms=("orm",)).condition1 and classify(chains, "paper", rms=("orm",)).easy
    assert not classify(chains, "paper", rms=("prm",)).easy
    with pytest.raises(ValueError, match="reference rule combines both RMs"):
        classify(chains, "reference", rms=("orm",))


def test_reference_condition1_holds_when_the_majority_scores_above_the_statistics():
    chains = [chain("7", 0.9, 0.9, 0.8),   # r = 0.9 + 0.72 = 1.62, z = (1.62 - 1) / 0.5 = 1.24
              chain("7", 0.5, 0.5),        # r = 1.0,               z = 0
              chain("3", 0.2, 0.1)]        # r = 0.3 (not in the majority)
    d = classify(chains, "reference", STATS)
    assert d.majority == "7" and d.majority_z == pytest.approx(0.62)  # (1.24 + 0) / 2
    assert d.condition1 and d.easy


def test_condition2_alone_makes_a_question_easy_and_the_vote_can_overrule_the_majority():
    chains = [chain("7", 0.3, 0.5, 0.4),   # r = 0.3 + 0.2 = 0.5, z = -1
              chain("7", 0.4, 0.6),        # r = 1.0,             z = 0
              chain("3", 0.9, 0.9)]        # r = 1.8
    paper, reference = classify(chains, "paper"), classify(chains, "reference", STATS)
    assert paper.orm_margin == pytest.approx(0.35 - 1.6 / 3) and not paper.condition1  # ORM: 0.35 - 0.5333
    assert reference.majority_z == pytest.approx(-0.5) and not reference.condition1
    for d in (paper, reference):
        assert d.majority == "7"
        # ORM per answer: 7 -> 0.3 + 0.4 = 0.7, 3 -> 0.9;  p = (0.4375, 0.5625)
        # H = -(0.4375 ln 0.4375 + 0.5625 ln 0.5625) = 0.685314;  2 (1 - sigmoid(H)) = 0.670153
        assert d.orm_confidence == pytest.approx(0.6701525, abs=1e-6)
        # PRM products per answer: 7 -> 0.2 + 0.6 = 0.8, 3 -> 0.9;  p = (8/17, 9/17)
        # H = 0.691416;  2 (1 - sigmoid(H)) = 0.667436
        assert d.prm_confidence == pytest.approx(0.6674363, abs=1e-6)
        assert d.condition2 and d.easy
    assert weighted_vote(chains) == "3"  # 7 -> 0.5 + 1.0 = 1.5 < 3 -> 1.8


def test_four_way_split_of_equal_scores_is_hard():
    chains = [chain(a, 0.3, 0.3) for a in "1234"]  # r = 0.6 each
    paper, reference = classify(chains, "paper"), classify(chains, "reference", RewardStats(1.5, 0.5))
    assert paper.majority == "1"  # 4-way tie: the first answer
    # every score equal: the majority is no better than the rest, S_avg = 0 (not > 0, whatever the rounding)
    assert paper.orm_margin == pytest.approx(0.0) and not paper.condition1
    assert reference.majority_z == pytest.approx(-1.8) and not reference.condition1  # (0.6 - 1.5) / 0.5
    for d in (paper, reference):
        # uniform over 4 answers: H = ln 4, sigmoid(ln 4) = 4 / 5, confidence = 2 (1 - 0.8) = 0.4 < 0.5
        assert d.orm_confidence == pytest.approx(0.4) and d.prm_confidence == pytest.approx(0.4)
        assert not d.condition2 and not d.easy


@pytest.mark.parametrize("swap", [False, True])
def test_condition2_needs_both_reward_models(swap):
    weights = [(0.9, 0.5), (0.01, 0.5), (0.01, 0.5), (0.01, 0.5)]  # (ORM, PRM) of answers 1..4
    chains = [chain(str(i), *((p, o) if swap else (o, p))) for i, (o, p) in enumerate(weights, 1)]
    d = classify(chains, "paper")  # majority (tie) "1": the uniform RM's margin is 0, condition 1 false
    confident, uniform = (d.prm_confidence, d.orm_confidence) if swap else (d.orm_confidence, d.prm_confidence)
    # concentrated: p = (0.9, 0.01, 0.01, 0.01) / 0.93, H = 0.177945, confidence = 0.911262
    assert confident == pytest.approx(0.9112615, abs=1e-6)
    assert uniform == pytest.approx(0.4)  # uniform over 4 answers
    assert not d.condition1 and not d.condition2 and not d.easy


def test_a_single_answer_is_easy_whatever_its_reward():
    chains = [chain("42", 0.1, 0.1), chain("42", 0.2, 0.1, 0.5)]
    d = classify(chains, "paper")
    assert not d.condition1  # every chain is in the majority: S_avg = 0
    assert d.orm_confidence == 1.0 and d.prm_confidence == 1.0  # H = 0, 2 (1 - 1/2) = 1
    assert d.easy and weighted_vote(chains) == "42" and majority(chains) == "42"
    assert not classify(chains, "reference", RewardStats(5.0, 1.0)).condition1  # z far below 0


def test_two_equal_answers_have_confidence_two_thirds():
    # H = ln 2, sigmoid(ln 2) = 2/3, confidence = 2 (1 - 2/3) = 2/3
    assert confidence([1.0, 1.0]) == pytest.approx(2 / 3)
    assert confidence([0.3, 0.3]) == pytest.approx(2 / 3)  # scale free


def test_three_answers_or_fewer_are_always_confident():
    # H <= ln 3 for <= 3 answers, sigmoid(ln 3) = 3/4, so confidence >= 2 (1 - 3/4) = 0.5
    rng = random.Random(0)
    for _ in range(500):
        weights = [rng.random() for _ in range(rng.randint(1, 3))]
        assert confidence(weights) >= 0.5 - 1e-12
    assert confidence([1.0, 1.0, 1.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("rule", ["paper", "reference"])
def test_no_answers_and_no_evidence(rule):
    chains = [chain(None, 0.9, 0.9), chain(None, 0.8, 0.7)]
    d = classify(chains, rule, STATS)
    assert (d.majority, d.orm_margin, d.prm_margin, d.majority_z) == (None, None, None, None)
    assert (d.orm_confidence, d.prm_confidence) == (0.0, 0.0)
    assert not d.easy and weighted_vote(chains) is None and majority(chains) is None
    assert confidence([0.0, 0.0]) == 0.0 and confidence([]) == 0.0


def test_answerless_chains_do_not_vote():
    chains = [chain(None, 1.0, 1.0), chain(None, 1.0, 1.0), chain("2", 0.1, 0.1)]
    assert majority(chains) == "2" and weighted_vote(chains) == "2"


def test_ties_go_to_the_answer_that_appears_first():
    b, a = chain("B", 0.25, 0.75), chain("A", 0.5, 0.5)  # r = 1.0 exactly for both
    assert weighted_vote([b, a]) == "B" and weighted_vote([a, b]) == "A"
    assert majority([b, a, a, b]) == "B" and majority([a, b, b, a]) == "A"


def test_top_k_ranks_by_the_orm_whatever_the_prm_says():
    # (ORM, PRM): the ORM order is b, d, a, c; the PRM (and ORM + PRM) order is c, a, d, b
    a, b, c, d = chain("1", 0.5, 0.9), chain("2", 0.9, 0.01), chain("3", 0.45, 1.0), chain("4", 0.6, 0.5)
    assert top_k([a, b, c, d], 2) == [b, d] and top_k([a, b, c, d], 2, "paper") == [b, d]
    assert top_k([a, b, c, d], 2, "reference") == [c, a]  # rewards 1.4, 0.91, 1.45, 1.1


def test_top_k_is_stable_and_best_of_k_prefers_answered_chains():
    x, y, z, w = (chain("x", 0.5, 0.5), chain("y", 1.0, 1.0), chain("z", 0.5, 0.5), chain("w", 0.5, 0.5))
    assert top_k([x, y, z, w], 3) == [y, x, z]  # ORM 0.5, 1, 0.5, 0.5: equal ones keep list order
    assert top_k([x, y, z, w], 3, "reference") == [y, x, z]  # rewards 1, 2, 1, 1
    first, second = chain("5", 0.6, 0.1), chain("6", 0.6, 0.9)
    assert best_by_orm([chain(None, 0.99, 1.0), first, second]) is first  # ORM tie: the first
    assert best_by_orm([]) is None


def test_reward_stats():
    s = RewardStats.of([1.0, 2.0, 3.0])  # mean 2, population std sqrt(2/3)
    assert (s.mean, s.std) == (2.0, pytest.approx(math.sqrt(2 / 3)))
    assert s.z(3.0) == pytest.approx(1.2247449)  # 1 / 0.8164966
    assert RewardStats.of([1.5, 1.5]).z(2.0) == 0.5  # std 0: z = r - mean
    stats = dataset_stats([chain("1", 0.5, 0.5), chain("2", 1.0, 1.0)])  # rewards 1 and 2
    assert (stats.mean, stats.std) == (1.5, 0.5)
    with pytest.raises(ValueError):
        RewardStats.of([])


def test_answers_group_equal_values():
    gsm8k, math_, sat = FORMATS["gsm8k"], FORMATS["math"], FORMATS["sat"]
    assert gsm8k.answers(["so \\boxed{18}", "She makes 18.0 dollars.", "no idea"]) == ["18", "18", None]
    assert math_.answers(["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{2}"]) == ["\\frac{1}{2}"] * 2 + ["2"]
    assert math_.answers(["\\boxed{\\frac12}"], known=["0.5"]) == ["0.5"]
    assert sat.answers(["The answer is (C).", "\\boxed{D}"]) == ["C", "D"]
    task = AnswerTask("magicore-sat", "math", [], check_option)
    assert task.score(Question("q", "?", "C", {}), sat.scorable("C")) == 1.0
    assert sat.scorable(None) == ""
