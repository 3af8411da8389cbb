"""Cost-aware scores (optimize/cost.py): λ = 0 is the paper's score exactly, a solved workflow
never scores below an unsolved one for any λ ≤ 1, and the cost is read from the run records."""

import random
from dataclasses import replace

import pytest

from scoreflow.optimize import stages
from scoreflow.optimize.config import RunConfig
from scoreflow.optimize.cost import cost_aware, mean_costs, run_cost
from scoreflow.tasks import load_task


def run(workflow: str, question: str, score: float, prompt: int, completion: int, calls: int) -> dict:
    return {"workflow_id": workflow, "question_id": question, "run": 0, "score": score, "prompt_tokens": prompt,
            "completion_tokens": completion, "llm_calls": calls, "status": "ok"}


def test_run_cost_in_each_unit():
    e = run("w", "q", 1.0, 1000, 200, 3)
    assert run_cost(e, "tokens") == 1200 and run_cost(e, "calls") == 3
    assert run_cost(e, "dollars", (0.15, 0.60)) == pytest.approx((1000 * 0.15 + 200 * 0.60) / 1e6)
    with pytest.raises(ValueError, match="needs the executor's price"):
        run_cost(e, "dollars")


def test_a_solved_workflow_never_scores_below_an_unsolved_one():
    rng = random.Random(0)
    for _ in range(2000):
        k, weight = rng.randint(2, 8), rng.choice([rng.random(), 1.0])
        solve = {f"w{i}": rng.choice([0.0, 1.0, rng.random()]) for i in range(k)}
        cost = {w: rng.choice([1.0, rng.uniform(0.1, 100)]) for w in solve}
        paid = cost_aware(solve, cost, {w: "q" for w in solve}, weight)
        for a in solve:
            assert 0.0 <= paid[a] <= solve[a]  # the cost only lowers a score, within [0, 1]
            for b in solve:
                if solve[a] > 0 == solve[b]:
                    assert paid[a] >= paid[b]
                if solve[a] == solve[b] and cost[a] < cost[b]:
                    assert paid[a] >= paid[b]  # the cheaper of two equally good ones
                if cost[a] == cost[b] and solve[a] > solve[b]:
                    assert paid[a] >= paid[b]  # at equal cost the order of s is kept


def test_the_median_cost_of_the_question_is_the_unit():
    solve = {"cheap": 1.0, "mid": 1.0, "dear": 1.0, "other": 1.0}
    cost = {"cheap": 100.0, "mid": 200.0, "dear": 400.0, "other": 5.0}
    question = {"cheap": "q1", "mid": "q1", "dear": "q1", "other": "q2"}
    paid = cost_aware(solve, cost, question, 0.25)
    assert paid == pytest.approx({"cheap": 1 - 0.25 * 0.5, "mid": 0.75, "dear": 0.5, "other": 0.75})


@pytest.mark.parametrize("invalid, floor", [("zero", 0.1), ("drop", 0.0)])
def test_weight_zero_is_the_papers_score_and_the_cost_comes_from_the_runs(tmp_path, invalid, floor):
    task = load_task("gsm8k", "validate")
    task = replace(task, questions=task.questions[:1])
    q = task.questions[0].id
    workflows = [{"id": w, "question_id": q, "valid": True} for w in ("a", "b", "c")]
    executions = [run("a", q, 1.0, 100, 20, 1), run("a", q, 0.0, 100, 20, 1), run("b", q, 1.0, 900, 300, 4),
                  run("c", q, 0.0, 10, 1, 1)]
    paper = stages.score(stages.Iteration(0, tmp_path / "0", RunConfig(invalid=invalid, valid_floor=floor), task),
                         workflows, executions)
    assert [r["score"] for r in paper] == pytest.approx([floor + (1 - floor) * s for s in (0.5, 1.0, 0.0)])
    assert [r["cost"] for r in paper] == [120.0, 1200.0, 11.0]  # tokens of the recorded runs, means over runs

    cfg = RunConfig(invalid=invalid, valid_floor=floor, cost_weight=0.5)
    paid = stages.score(stages.Iteration(0, tmp_path / "1", cfg, task), workflows, executions)
    c_ref = 120.0  # the median of 120, 1200, 11
    expected = [0.5 - 0.5 * 120 / c_ref, max(0.0, 1.0 - 0.5 * 1200 / c_ref), 0.0]
    assert [r["score"] for r in paid] == pytest.approx([floor + (1 - floor) * s for s in expected])
    executions[2]["completion_tokens"] = 120  # b's first run now costs more: read from the records
    assert stages.score(stages.Iteration(0, tmp_path / "2", cfg, task), workflows, executions)[1]["cost"] == 1020.0
    assert mean_costs(executions, "calls") == {"a": 1.0, "b": 4.0, "c": 1.0}


def test_dollars_need_a_priced_executor():
    with pytest.raises(ValueError, match="has no list price"):
        RunConfig(cost_weight=0.5, cost_unit="dollars")
    assert RunConfig(cost_weight=0.5, cost_unit="dollars", executor_url="http://x/v1",
                     executor_model="gpt-4o-mini").price == (0.15, 0.60)
