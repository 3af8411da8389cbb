"""MAgICoRE's loop and run bookkeeping against a deterministic scripted endpoint (the loopback
fake server, replying by role and content) and a table-driven fake reward model."""

import asyncio
import json
import re

import pytest

from fake_openai_server import FakeOpenAIServer, Reply, completion
from scoreflow.executor import ExecutorClient
from scoreflow.magicore import (FORMATS, Agents, Ledger, MagicoreConfig, OutcomeRewardModel, ProcessRewardModel,
                                RewardModels, RewardStats, MagicoreRunConfig, Runner, Sampling, refine_until_easy, solve)
from scoreflow.magicore.agents import NO_REVIEW
from scoreflow.tasks.base import AnswerTask, Question
from scoreflow.tasks.gsm8k import check_number

# Solver chains of the hard question by seed (chain index), and their (ORM, PRM steps):
HARD = ["a\n\n\\boxed{1}", "b\n\n\\boxed{2}", "c\n\n\\boxed{3}", "d\n\n\\boxed{4}"]
FIXED, AGAIN, LOST, EASY = "fixed\n\n\\boxed{7}", "again\n\n\\boxed{4}", "lost\n\n\\boxed{9}", "e\n\n\\boxed{5}"
SCORES = {
    HARD[0]: (0.2, (0.5, 0.2)), HARD[1]: (0.2, (0.5, 0.2)), HARD[2]: (0.2, (0.5, 0.2)),  # r = 0.3
    HARD[3]: (0.3, (0.5, 0.6)),   # r = 0.6
    FIXED: (0.9, (0.9, 0.9)),     # r = 1.71
    AGAIN: (0.3, (0.5, 0.6)),     # r = 0.6, ties with HARD[3]
    LOST: (0.1, (0.1, 0.1)),      # r = 0.11
    EASY: (0.8, (0.9, 0.9)),      # r = 1.61
}


class TableRM(OutcomeRewardModel, ProcessRewardModel):
    """Scores looked up by the exact chain text (an unknown text fails the test)."""

    def __init__(self):
        self.scored: list[str] = []

    async def orm(self, question, solutions):
        self.scored += solutions
        return [SCORES[s][0] for s in solutions]

    async def prm(self, question, solution):
        return list(SCORES[solution][1])


def role(prompt: str) -> str:
    return ("solver" if prompt.startswith("Solve the following") else
            "reviewer" if "give step-by-step feedback" in prompt else "refiner")


class ScriptedServer(FakeOpenAIServer):
    """Solver: HARD[seed] for questions containing "hard", else EASY. Reviewer: "feedback".
    Refiner: by the answer of the chain it rewrites: 1-3 -> FIXED, 4 -> AGAIN, 5 -> EASY; always
    LOST when `lose` is set."""

    lose = False

    def _default_reply(self, path, body):
        prompt = body["messages"][-1]["content"]
        kind = role(prompt)
        if kind == "solver":
            text = HARD[body["seed"] % 4] if "hard" in prompt else EASY
        elif kind == "reviewer":
            text = "feedback"
        else:
            answer = re.search(r"Current solution:\n.*?\\boxed\{(\d)\}", prompt, re.S).group(1)
            text = LOST if self.lose else {"4": AGAIN, "5": EASY}.get(answer, FIXED)
        return Reply(body=completion(text))


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def run_loop(server, question, iterations, stats=RewardStats(1.0, 0.5), k=4, ablation="none"):
    async def main():
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            agents, rms = Agents(executor, FORMATS["gsm8k"], Sampling(seed=0)), RewardModels(TableRM(), TableRM())
            chains, ledgers = await solve(agents, rms, question, k)
            ledger = Ledger()
            for one in ledgers:
                ledger = ledger.merged(one)
            config = MagicoreConfig(k=k, iterations=iterations, ablation=ablation)
            return await refine_until_easy(agents, rms, question, chains, config, stats, ledger)
    return asyncio.run(main())


def prompts(server, kind):
    return [r.body["messages"][-1]["content"] for r in server.requests
            if role(r.body["messages"][-1]["content"]) == kind]


# (question, condition-1 statistics) -> which conditions hold at round 0:
#   "easy", mean 1: both; "easy", mean 2: only condition 2 (z < 0, one answer);
#   "hard", mean 0: only condition 1 (z > 0, four answers); "hard", mean 1: neither.
ABLATION_CASES = [  # question, stats, ablation, refined at round 0
    ("an easy question", RewardStats(1.0, 0.5), "none", False),
    ("an easy question", RewardStats(1.0, 0.5), "refine-all", True),
    ("an easy question", RewardStats(2.0, 0.5), "none", False),
    ("an easy question", RewardStats(2.0, 0.5), "cond1-only", True),
    ("an easy question", RewardStats(2.0, 0.5), "cond2-only", False),
    ("a hard question", RewardStats(0.0, 0.5), "none", False),
    ("a hard question", RewardStats(0.0, 0.5), "cond1-only", False),
    ("a hard question", RewardStats(0.0, 0.5), "cond2-only", True),
]


@pytest.mark.parametrize("question, stats, ablation, refined", ABLATION_CASES)
def test_ablations_change_which_questions_are_refined(server, question, stats, ablation, refined):
    trace = run_loop(server, question, iterations=1, stats=stats, ablation=ablation)
    assert trace.rounds[0].hard == refined
    assert len(trace.rounds) == (2 if refined else 1)
    assert bool(prompts(server, "refiner")) == refined


def test_no_review_ablation_refines_without_reviewer_or_step_scores(server):
    trace = run_loop(server, "a hard question", iterations=1, ablation="no-review")
    assert trace.rounds[0].hard and trace.answer == "7"  # refined as MAgICoRE would be
    refines = prompts(server, "refiner")
    assert not prompts(server, "reviewer") and len(refines) == 4
    assert all(NO_REVIEW in p and "(Score:" not in p for p in refines)
    assert trace.rounds[1].calls == 4 + 4  # Solver, then the Refiner alone


def test_hard_question_is_refined_then_answered_when_it_becomes_easy(server):
    trace = run_loop(server, "a hard question", iterations=3)
    first, second = trace.rounds
    # round 0: answers 1,2,3,4 (majority by tie: "1", z = (0.3 - 1) / 0.5 = -1.4), ORM/PRM spread: hard
    assert first.hard and first.difficulty.majority == "1" and not first.difficulty.condition2
    assert first.answer == "4"  # weighted vote: 0.6 beats 0.3
    # round 1: top 4 of the 8 = three FIXED (1.71) + HARD[3] (0.6, ties with AGAIN and is older)
    assert [c.text for c in trace.chains] == [FIXED, FIXED, FIXED, HARD[3]]
    assert [c.origin for c in trace.chains] == [1, 1, 1, 0]
    # the majority is recomputed: now "7", z = (1.71 - 1) / 0.5 = 1.42 -> easy, stop early
    assert not second.hard and second.difficulty.majority == "7" and second.difficulty.condition1
    assert trace.answer == "7" and len(trace.rounds) == 2
    assert (first.calls, second.calls) == (4, 12)  # k Solver calls, then k Reviewer + k Refiner
    assert (first.tokens, second.tokens) == (60, 180)  # 15 tokens per fake reply
    assert trace.scored == 8
    reviews, refines = prompts(server, "reviewer"), prompts(server, "refiner")
    assert len(reviews) == len(refines) == 4
    review_a = next(p for p in reviews if "\\boxed{1}" in p)
    assert "a (Score: 5/10)\n\n\\boxed{1} (Score: 2/10)" in review_a and "below 6/10" in review_a
    assert all("Teacher feedback:\nfeedback" in p for p in refines)


def test_question_that_stays_hard_runs_all_iterations(server):
    server.lose = True  # every refinement scores below every old chain
    trace = run_loop(server, "a hard question", iterations=2)
    assert [r.hard for r in trace.rounds] == [True, True, True]
    assert [r.answer for r in trace.rounds] == ["4", "4", "4"]
    assert [r.calls for r in trace.rounds] == [4, 12, 20]
    assert [c.origin for c in trace.chains] == [0, 0, 0, 0] and trace.scored == 12


def test_easy_question_is_answered_without_refinement(server):
    trace = run_loop(server, "an easy question", iterations=3)
    assert len(trace.rounds) == 1 and not trace.rounds[0].hard and trace.answer == "5"
    assert server.request_count == 4 and trace.rounds[0].calls == 4


def test_run_writes_resumable_results_with_baselines_on_the_same_chains(server, tmp_path):
    questions = [Question("hard", "a hard question", "7", {}), Question("easy", "an easy question", "5", {})]
    task = AnswerTask("magicore-gsm8k", "math", questions, check_number)
    config = MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=4, iterations=1), Sampling(seed=0), self_refine_rounds=1)

    async def main(run_config):
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            agents = Agents(executor, FORMATS["gsm8k"], run_config.sampling)
            runner = Runner(task, questions, agents, RewardModels(TableRM(), TableRM()), run_config, tmp_path,
                            concurrency=2, log=lambda line: None)
            return await runner.run()

    summary = asyncio.run(main(config))
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    hard, easy = rows["hard"], rows["easy"]
    assert hard["magicore"]["answers"] == ["4", "7"] and hard["magicore"]["correct"] == [0.0, 1.0]
    assert hard["magicore"]["hard"] == [True, False] and hard["magicore"]["calls"] == [4, 12]
    assert easy["magicore"]["answers"] == ["5", "5"] and easy["magicore"]["hard"] == [False, False]
    assert easy["magicore"]["calls"] == [4, 4]  # stopped at iteration 0: carried forward
    b = hard["baselines"]
    assert {n: r["answer"] for n, r in b.items()} == {
        "best_of_k": "4", "self_consistency": "1", "weighted_sc": "4", "self_refine": "7", "self_refine_sc": "7"}
    assert [b[n]["calls"] for n in ("best_of_k", "self_refine", "self_refine_sc")] == [4, 3, 12]  # 1 + 2, 4 + 4*2
    methods = {m["method"]: m for m in summary["methods"]}
    assert methods["MAgICoRE (T=1)"]["accuracy"] == 1.0 and methods["MAgICoRE (T=1)"]["calls"] == 8.0
    assert methods["Self-consistency (k-way)"]["accuracy"] == 0.5
    assert [i["accuracy"] for i in summary["iterations"]] == [0.5, 1.0]
    assert [i["hard"] for i in summary["iterations"]] == [0.5, 0.0]
    assert "| MAgICoRE (T=1) | 1.000 | 8.0 |" in (tmp_path / "results.md").read_text()

    sent = server.request_count
    assert asyncio.run(main(config)) == summary and server.request_count == sent  # resumed: nothing redone
    with pytest.raises(ValueError, match=r"other settings \(magicore\.iterations: stored 1, given 2; self_refine_rounds: stored 1, given 2\)"):
        asyncio.run(main(MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=4, iterations=2), Sampling(seed=0))))


class OperatorServer(FakeOpenAIServer):
    """Judge: 2/10 for chains answering 1, else 9/10 (ORM and every PRM step); Reviewer:
    "feedback"; Refiner: a chain answering 2."""

    def _default_reply(self, path, body):
        prompt = body["messages"][-1]["content"]
        low = "\\boxed{1}" in prompt
        if "numbered steps" in prompt:
            text = "Step 1: 2\nStep 2: 2" if low else "Step 1: 9\nStep 2: 9"
        elif "Score: <0-10>" in prompt:
            text = "Score: 2" if low else "Score: 9"
        else:
            text = "feedback" if role(prompt) == "reviewer" else "fixed\n\n\\boxed{2}"
        return Reply(body=completion(text))


def test_magicore_refine_operator_refines_hard_candidates_through_the_run():
    from scoreflow.workflow.context import WorkflowConfig
    from scoreflow.workflow.magicore_refine import MagicoreRefine
    from scoreflow.workflow.run_context import RunContext

    candidates = ["p\n\n\\boxed{1}", "q\n\n\\boxed{1}", "r\n\n\\boxed{2}", "s\n\n\\boxed{3}", "t\n\n\\boxed{4}"]

    async def main(server):
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            ctx = RunContext(executor, "What is 1 + 1?", "math")
            result = await MagicoreRefine(WorkflowConfig("math", "fake", ctx))(solutions=candidates)
            return result, ctx

    with OperatorServer() as server:
        result, ctx = asyncio.run(main(server))
    # majority "1" scores low and the judge's votes spread over 4 answers: hard; one round of
    # review + refine makes five chains answering 2 (r = 0.9 + 0.81), which win the vote; the
    # response is the best chain answering 2, and on the tie the original candidate is older
    assert result == {"response": "r\n\n\\boxed{2}"}
    (entry,) = ctx.trace
    # 5 ORM + 5 PRM judge calls, 5 Reviewer + 5 Refiner calls, 5 + 5 judge calls on the new chains
    assert entry.operator == "MagicoreRefine" and entry.error is None and entry.llm_calls == 30


def test_generated_math_workflows_can_use_magicore_refine_when_offered():
    from scoreflow.workflow.prompts import generator_guide, workflow_source
    from scoreflow.workflow.runtime import run_workflow, validate_workflow

    body = '''
candidates = []
for answer in ["1", "1", "2", "3", "4"]:
    candidates.append("work\\n\\n\\\\boxed{" + answer + "}")
refined = await self.magicore_refine(solutions=candidates)
return refined["response"]
'''
    code = workflow_source("math", body, operators=("Custom", "MagicoreRefine"))
    assert "self.magicore_refine = operator.MagicoreRefine(config)" in code
    assert "await self.magicore_refine(solutions, problem=None)" in generator_guide("math", ("MagicoreRefine",))
    assert "magicore" not in generator_guide("math").lower()  # opt-in: the paper's operator set by default
    assert validate_workflow(code, "math") == []
    qa = workflow_source("qa", body).replace("self.problem = problem", "self.problem = problem\n"
                                             "        self.magicore_refine = operator.MagicoreRefine(config)")
    assert any("MagicoreRefine is not available" in p for p in validate_workflow(qa, "qa"))  # math only

    async def main(server):
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            return await run_workflow(code, "What is 1 + 1?", executor, "math", timeout_s=60)

    with OperatorServer() as server:
        result = asyncio.run(main(server))
    # as in the operator test above: the low-scored majority "1" is refined away and "2" wins
    assert result.status == "ok" and result.answer == "\\boxed{2}", result.error
    assert [e.operator for e in result.trace][0] == "MagicoreRefine" and result.trace[0].llm_calls == 30
