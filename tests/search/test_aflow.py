"""AFlow's rules (scoreflow/search/aflow.py) on hand-computed cases, then whole searches in this
process against a scripted optimiser and executor on loopback (scripted_search.py): a child that
scores higher becomes a parent candidate and its parent's experience records it, an invalid
child is retried and never stops the search, and the convergence rule stops it early."""

import json
import math

import numpy as np
import pytest

from scripted_search import OPTIMIZER, SearchScript, aflow_reply
from scoreflow.search.aflow import search
from scoreflow.search.aflow import (ALPHA, LAMBDA, candidates, converged, experience, select,
                                    selection_probabilities)
from scoreflow.search.command import run
from scoreflow.search.config import AFLOW_EMBEDDED, AflowConfig
from scoreflow.testing.scripted_server import Reply
from scoreflow.workflow.runtime import validate_workflow
from scripted_workflows import BAD, GOOD, INVALID


def test_selection_probabilities_are_the_mixed_softmax_over_percent_scores():
    scores = [0.82, 0.8, 0.5, 0.125]
    s = [100.0 * x for x in scores]
    weights = [math.exp(ALPHA * (v - max(s))) for v in s]
    reference = [LAMBDA / len(s) + (1 - LAMBDA) * w / math.fsum(weights) for w in weights]
    p = selection_probabilities(scores)
    assert p.dtype == np.float64 and p.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(p, reference, rtol=1e-13, atol=0)
    assert (LAMBDA, ALPHA) == (0.3, 0.2)
    np.testing.assert_allclose(selection_probabilities([0.4, 0.4]), [0.5, 0.5])  # ties: uniform


def test_parents_are_round_one_and_the_best_three_others_drawn_as_the_formula_says():
    rounds = [{"round": r, "score": s} for r, s in
              enumerate([0.1, 0.6, None, 0.3, 0.9, 0.6, 0.2], start=1)]  # round 3 had no valid child
    pool = candidates(rounds)
    assert [r["round"] for r in pool] == [5, 2, 6, 1]  # best first, ties to the earlier round
    p = selection_probabilities([r["score"] for r in pool])
    drawn = [select(rounds, seed, 8)["round"] for seed in range(4000)]
    frequencies = [drawn.count(r["round"]) / len(drawn) for r in pool]
    np.testing.assert_allclose(frequencies, p, atol=0.03)
    assert select(rounds, 7, 8) == select(rounds, 7, 8)  # seeded by (seed, round): a resume draws the same


def test_the_convergence_rule():
    flat = [(0.5, 0.0)] * 6
    assert not converged(flat[:5]) and converged(flat)  # the top-3 mean still for 5 rounds in a row
    assert not converged([(0.5, 0.0)] * 3 + [(0.9, 0.0)] + [(0.5, 0.0)] * 4)  # a new best resets the streak
    assert converged([(0.5, 0.0)] * 3 + [(0.9, 0.0)] + [(0.5, 0.0)] * 5)
    assert not converged(flat[:3])  # fewer than top_k + 1 rounds
    noisy = [(0.5, 0.1), (0.5, 0.1), (0.5, 0.1), (0.52, 0.1), (0.53, 0.1), (0.53, 0.1), (0.54, 0.1), (0.54, 0.1)]
    assert not converged(noisy) and converged(noisy, z=1.0)  # z = 0 (AFlow's) asks for no change at all


def config(server, **kw) -> AflowConfig:
    return AflowConfig(**{"limit": 2, "runs": 1, "optimizer_url": server.base_url, "optimizer_model": OPTIMIZER,
                          "executor_url": server.base_url, "executor_model": "executor", **kw})


def rounds_of(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_a_better_child_becomes_a_parent_and_invalid_children_never_stop_the_search(tmp_path, gsm8k_rows):
    replies = [aflow_reply(INVALID, "anything"), aflow_reply(GOOD, "ask for GOOD answers"),  # round 2: retried
               Reply(400, {"error": {"message": "too long for the context"}}),  # round 3: refused,
               "<modification>x</modification> no graph here",  # then no workflow at all: no valid child
               aflow_reply(BAD, "ask for BAD answers")]  # round 4: a worse child
    out = tmp_path / "aflow"
    with SearchScript(gsm8k_rows[:2], replies) as server:
        result = run("scoreflow.aflow", config(server, rounds=3, attempts=2, early_stop=False), out,
                     AFLOW_EMBEDDED, search)
        requests = server.optimizer_requests()
    rounds = rounds_of(out)
    assert [(r["round"], r["parent"], r["score"], r["replies"]) for r in rounds] == [
        (1, None, 0.0, 0), (2, 1, 1.0, 2), (3, rounds[2]["parent"], None, 2), (4, rounds[3]["parent"], 0.0, 1)]
    assert result["best_round"] == 2 and result["stopped"] == "rounds"
    assert "no <graph> block" in rounds[2]["problems"][0]  # the last reply's problem, the round spent
    assert len(requests) == 5
    retry = requests[1][-1]["content"]
    assert retry.startswith("That reply cannot be used: ") and "imports are not allowed" in retry  # fed back
    assert requests[3][-1]["content"].startswith("That reply cannot be used: the optimiser gave no usable reply (")
    assert requests[3][-2]["role"] == "user"  # no empty assistant turn for the refused request

    assert 2 in [r["round"] for r in candidates(rounds[:2])]  # the better child is a parent candidate
    assert experience(rounds, rounds[0])[0] == {"modification": "ask for GOOD answers", "score": 1.0, "raised": True}
    assert rounds[3]["parent"] == select(rounds[:3], 0, 4)["round"]
    prompt = requests[4][1]["content"]  # round 4's request shows its parent's score and experience
    if rounds[3]["parent"] == 1:
        assert "scored 0.000" in prompt and "- raised the score to 1.000: ask for GOOD answers" in prompt
    else:
        assert "scored 1.000" in prompt and "No modification of this workflow has been tried yet." in prompt
    best = (out / "best_workflow.py").read_text()
    assert best == GOOD and validate_workflow(best, "math") == []


def test_convergence_stops_the_search_early(tmp_path, gsm8k_rows):
    out = tmp_path / "aflow"
    with SearchScript(gsm8k_rows[:1], then=lambda i: aflow_reply(BAD, f"change {i}")) as server:
        result = run("scoreflow.aflow", config(server, limit=1, rounds=20), out, AFLOW_EMBEDDED, search)
        assert len(server.optimizer_requests()) == 5
    assert result["stopped"] == "converged" and len(rounds_of(out)) == 6  # the template and 5 children, all 0
