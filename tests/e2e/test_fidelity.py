"""The optimisation loop as the paper runs it (PAPERS.md §S3/§S4): template similarity on the
run_workflow body, a workflow must call an operator, and every executor call is a real request
(R runs, identical calls, other workflows) unless a crashed run is resumed."""

import asyncio

from scoreflow.executor import ExecutorClient
from scoreflow.optimize import stages
from scoreflow.optimize.config import RunConfig
from scoreflow.rundir import stage_info
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import FakeOpenAIServer
from scoreflow.workflow.prompts import TEMPLATE_BODIES, generator_prompt, template_workflow, workflow_source
from scoreflow.workflow.validate import SIMILARITY_THRESHOLDS, NO_OPERATOR_CALL, calls_an_operator, template_similarity

ENSEMBLE = """\
solutions = []
for i in range(3):
    s = await self.custom(instruction="Solve the problem step by step and state the final answer.")
    solutions.append(s["response"])
best = await self.sc_ensemble(solutions=solutions)
return best["response"]"""
PROGRAM_REVIEW = """\
program = await self.programmer(analysis="Compute the answer exactly.")
reviewed = await self.review(pre_solution=program["output"])
return reviewed["solution"]"""
REWORDED = TEMPLATE_BODIES["math"].replace("explaining the reasoning behind each step", "giving the reason for every step")


def test_similarity_is_taken_on_the_body_so_short_good_workflows_are_kept():
    threshold = SIMILARITY_THRESHOLDS["gsm8k"]
    kept = [workflow_source("math", body) for body in (ENSEMBLE, PROGRAM_REVIEW)]
    dropped = [template_workflow("math"), workflow_source("math", REWORDED)]
    assert all(template_similarity(code, "math") < threshold for code in kept)
    assert all(template_similarity(code, "math") >= threshold for code in dropped)
    assert template_similarity(template_workflow("math"), "math") == 1.0
    assert template_similarity("class Workflow(:", "math") < 0.5  # unparsable: raw text against the template


def test_the_pairs_stage_drops_near_template_workflows_at_the_threshold(tmp_path, monkeypatch):
    """The loop's one near-template filter (PAPERS.md §S4): stages.pairs drops a workflow whose
    body's template_similarity is >= the task's threshold before dpo.build_pairs pairs the rest;
    a task without a threshold (code) keeps every workflow."""
    task = load_task("gsm8k", "validate")
    q = task.questions[0].id
    codes = {"template": template_workflow("math"), "reworded": workflow_source("math", REWORDED),
             "ensemble": workflow_source("math", ENSEMBLE), "program": workflow_source("math", PROGRAM_REVIEW)}
    workflows = [{"id": i, "question_id": q, "valid": True, "code": code, "response": ""} for i, code in codes.items()]
    scores = [{"workflow_id": i, "question_id": q, "score": s} for i, s in zip(codes, (1.0, 0.9, 0.5, 0.0))]
    reworded = template_similarity(codes["reworded"], "math")

    def paired(threshold: float | None, out: str) -> tuple[set[str], int]:
        if threshold is None:
            monkeypatch.delitem(SIMILARITY_THRESHOLDS, task.name)
        else:
            monkeypatch.setitem(SIMILARITY_THRESHOLDS, task.name, threshold)
        it = stages.Iteration(0, tmp_path / out, RunConfig(), task)
        drawn = stages.pairs(it, workflows, scores)
        return {p["winner_id"] for p in drawn} | {p["loser_id"] for p in drawn}, stage_info(it.dir, "pairs")["candidates"]

    assert paired(SIMILARITY_THRESHOLDS["gsm8k"], "paper") == ({"ensemble", "program"}, 1)
    assert paired(reworded, "at") == ({"ensemble", "program"}, 1)  # similarity == threshold: dropped
    assert paired(reworded + 1e-9, "above")[1] == 3  # reworded kept: it beats ensemble and program
    assert paired(None, "off")[1] == 6  # no threshold: the template itself is paired


def test_a_workflow_must_call_an_operator():
    assert calls_an_operator(workflow_source("math", ENSEMBLE))
    assert calls_an_operator(workflow_source("math", "x = await self.helper()\nreturn x", methods="""
        async def helper(self):
            r = await self.custom(instruction="Solve it.")
            return r["response"]"""))
    assert not calls_an_operator(workflow_source("math", 'return "\\\\boxed{64}"'))
    assert not calls_an_operator(workflow_source("math", 'x = 20 + 44\nreturn str(x)'))


def test_every_call_is_a_real_request_and_only_a_crashed_run_replays(tmp_path):
    """The paper's R runs are R sets of real calls, and the cache does not dedupe: the guide's
    ScEnsemble of three identical Custom calls costs three requests, two workflows making the
    same call cost two. Only a run resumed after a crash replays the calls it had finished."""
    task = load_task("gsm8k", "validate")
    q = task.questions[0]
    solve = 'r = await self.custom(instruction="Solve it.")\nreturn r["response"]'
    ensemble = {"id": "ensemble", "question_id": q.id, "valid": True, "code": workflow_source("math", ENSEMBLE)}
    same_call = [{"id": f"w{i}", "question_id": q.id, "valid": True, "code": workflow_source("math", solve)}
                 for i in range(2)]

    def execute(workflows: list[dict], runs: int, out) -> list[dict]:
        it = stages.Iteration(0, out, RunConfig(runs=runs), task)

        async def main():
            async with ExecutorClient(server.base_url, "fake", api_key="k", cache_dir=out / "cache") as client:
                return await stages.execute(it, workflows, client)
        return asyncio.run(main())

    with FakeOpenAIServer() as server:
        execute([ensemble], 1, tmp_path / "ensemble")
        assert server.request_count == 3 + 1  # three identical Custom calls and the extraction (three identical
        # candidates need no ScEnsemble call)
        sent = server.request_count
        records = execute(same_call, 3, tmp_path / "same")
        assert server.request_count - sent == 2 * 3 * 2  # 2 workflows x 3 runs x (Custom + extraction)
        assert sorted((r["workflow_id"], r["run"]) for r in records) == [(w, r) for w in ("w0", "w1") for r in range(3)]
        sent = server.request_count
        (tmp_path / "same" / "executions.jsonl").unlink()  # the process died after the calls, before the records
        resumed = execute(same_call, 3, tmp_path / "same")
        assert server.request_count == sent  # every finished call replayed, none sent again
        assert sorted(r["answer"] for r in resumed) == sorted(r["answer"] for r in records)


def test_magicore_refine_is_offered_only_when_asked_for(tmp_path):
    task = load_task("gsm8k", "validate")
    uses_it = workflow_source("math", 'r = await self.magicore_refine(solutions=["a", "b"])\nreturn r["response"]',
                              operators=("Custom", "MagicoreRefine"))
    paper = stages.Iteration(0, tmp_path, RunConfig(), task)
    extended = stages.Iteration(0, tmp_path, RunConfig(operators="+MagicoreRefine"), task)
    response = uses_it + "</graph>"
    assert "MagicoreRefine" not in template_workflow("math") and "MagicoreRefine" in template_workflow(
        "math", ("MagicoreRefine",))
    assert stages.check_workflow(response, extended)["valid"]
    problems = stages.check_workflow(response, paper)["problems"]
    assert problems == ["uses MagicoreRefine, which this run does not offer (add it with --operators +Name)"]


def test_the_dry_run_keeps_only_workflows_that_run(tmp_path):
    task = load_task("gsm8k", "validate")
    it = stages.Iteration(0, tmp_path, RunConfig(), task)
    correct = workflow_source("math", 'r = await self.custom(instruction="Solve it.")\nreturn r["response"]')
    goal = workflow_source("math", 'r = await self.custom(instruction="Solve: " + self.problem["goal"])\n'
                                   'return r["response"]')
    no_operator = workflow_source("math", 'return str(20 + 44)')
    checked = stages.check_and_dry_run([[c + "</graph>" for c in (correct, goal, no_operator)]], it)[0]
    assert [w["valid"] for w in checked] == [True, False, False]
    assert checked[1]["problems"][0].startswith("fails its dry run on a canned executor (error): TypeError")
    assert checked[2]["problems"] == [NO_OPERATOR_CALL]


def test_the_question_is_the_problem_the_workflow_is_written_for():
    """As in ScoreFlow (one workflow per question, adapted to it): the question is the problem the
    generator writes for, not an example; the guide before it is one prefix shared by every question."""
    system, user = generator_prompt("math", "What is 2 + 2?")
    assert user["content"].startswith("The problem to write the workflow for:\n\nWhat is 2 + 2?")
    assert "example problem" not in (system["content"] + user["content"]).lower()
    assert "for context only" not in user["content"]
    assert system == generator_prompt("math", "Another question?")[0]
