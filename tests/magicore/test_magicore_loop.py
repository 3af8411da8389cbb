"""MAgICoRE's loop on one question as the MAgICoRE paper describes it, and each of the paper's
variants, against the scripted endpoint and table-driven reward model of scripted_magicore.py."""

import asyncio

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.magicore.agents import NO_REVIEW
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scripted_magicore import EASY, FIXED, FLATTERING, HARD, SPLIT, WORSE, ScriptedServer, role, run_loop
from scripted_magicore import reviewed_solution as shown


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


# question -> which conditions hold at round 0 (scripted_magicore.py): easy: condition 2 only;
# mixed: condition 1 only; split: neither by the paper's rule (the PRM scores the majority low),
# but condition 1 for the ORM alone
ABLATION_CASES = [  # question, ablation, refined at round 0
    ("an easy question", "none", False),
    ("an easy question", "refine-all", True),
    ("an easy question", "cond1-only", True),
    ("an easy question", "cond2-only", False),
    ("a mixed question", "none", False),
    ("a mixed question", "cond1-only", False),
    ("a mixed question", "cond2-only", True),
    ("a split question", "none", True),
    ("a split question", "orm-only", False),
    ("a split question", "prm-only", True),
]


@pytest.mark.parametrize("question, ablation, refined", ABLATION_CASES)
def test_ablations_change_which_questions_are_refined(server, question, ablation, refined):
    trace = run_loop(server, question, iterations=1, ablation=ablation)
    assert trace.rounds[0].hard == refined
    assert len(trace.rounds) == (2 if refined else 1)
    assert bool(server.prompts("refiner")) == refined


def test_a_majority_only_the_orm_likes_is_refined_by_the_paper_rule_not_by_the_reference(server):
    paper = run_loop(server, "a split question", iterations=1)
    d = paper.rounds[0].difficulty
    # majority "1" (4-way tie: the first chain): ORM 0.9 - 1.65 / 4 > 0, PRM 0.1 - 1.9 / 4 < 0
    assert (d.majority, d.orm_margin > 0, d.prm_margin < 0) == ("1", True, True) and paper.rounds[0].hard
    assert sorted(map(shown, server.prompts("reviewer"))) == sorted(SPLIT)  # reviews run concurrently
    requests = server.request_count
    # the reference's combined reward: 1.0 for the majority, 0.85 for the others; z = (1.0 - 1.0) / 0.5 = 0
    reference = run_loop(server, "a split question", iterations=1, difficulty_rule="reference")
    assert reference.rounds[0].difficulty.majority_z == 0.0 and not reference.rounds[0].hard
    assert server.request_count == requests + 4  # the Solver only


def test_kept_chains_are_the_top_k_by_orm_whatever_the_prm_says(server):
    server.refine_to = FLATTERING  # ORM 0.15, below every Solver chain; PRM 1.0, above every one
    trace = run_loop(server, "a hard question", iterations=1)
    assert list(trace.chains) == sorted(trace.chains, key=lambda c: -c.orm)
    assert [c.text for c in trace.chains] == [HARD[3], HARD[0], HARD[1], HARD[2]]  # ORM 0.3, 0.2, 0.2, 0.2
    # the reference ranks by ORM + PRM product: the flattering chains (1.15) beat every Solver chain
    reference = run_loop(server, "a hard question", iterations=1, difficulty_rule="reference")
    assert sorted(c.text for c in reference.chains) == sorted(FLATTERING.values())


def test_each_round_reviews_the_chains_the_round_before_wrote(server):
    server.refine_to = WORSE  # the rewrites score below every Solver chain, so those stay the top k
    trace = run_loop(server, "a hard question", iterations=2)
    assert [c.text for c in trace.chains] == list(WORSE.values())  # the 2k of round 2 are all WORSE
    for kind in ("reviewer", "refiner"):
        assert sorted(map(shown, server.prompts(kind, iteration=1))) == sorted(HARD)
        assert sorted(map(shown, server.prompts(kind, iteration=2))) == sorted(WORSE.values())  # not the kept HARD


def test_hard_question_is_refined_then_answered_when_it_becomes_easy(server):
    trace = run_loop(server, "a hard question", iterations=3)
    first, second = trace.rounds
    # round 0: answers 1,2,3,4 (majority by tie: "1"; ORM 0.2 - 0.9 / 4 < 0), ORM/PRM spread: hard
    assert first.hard and first.difficulty.majority == "1" and not first.difficulty.condition1
    assert not first.difficulty.condition2 and first.answer == "4"  # weighted vote: 0.35 beats 0.3
    # round 1: top 4 of the 8 by ORM = three FIXED (0.9) + HARD[3] (0.3, ties with AGAIN and is older)
    assert [c.text for c in trace.chains] == [FIXED, FIXED, FIXED, HARD[3]]
    assert [c.origin for c in trace.chains] == [1, 1, 1, 0]
    # the majority is recomputed: now "7", ORM 0.9 - 3.0 / 4 > 0, PRM 0.81 - 2.48 / 4 > 0 -> easy, stop
    assert not second.hard and second.difficulty.majority == "7" and second.difficulty.condition1
    assert second.difficulty.orm_margin == pytest.approx(0.15) and second.difficulty.prm_margin == pytest.approx(0.19)
    assert trace.answer == "7" and len(trace.rounds) == 2
    assert (first.calls, second.calls) == (4, 12)  # k Solver calls, then k Reviewer + k Refiner
    assert (first.tokens, second.tokens) == (60, 180)  # 15 tokens per fake reply
    assert trace.scored == 8
    reviews, refines = server.prompts("reviewer"), server.prompts("refiner")
    assert len(reviews) == len(refines) == 4
    review_a = next(p for p in reviews if "\\boxed{1}" in p)
    assert "a (Score: 5/10)\n\n\\boxed{1} (Score: 2/10)" in review_a and "below 6/10" in review_a
    assert all("Teacher feedback:\nfeedback" in p for p in refines)


def test_question_that_stays_hard_runs_all_iterations(server):
    server.refine_to = WORSE
    trace = run_loop(server, "a hard question", iterations=2)
    assert [r.hard for r in trace.rounds] == [True, True, True]
    # round 1 keeps the Solver chains (ORM above WORSE's 0.1); round 2 the 2k are all WORSE, equal: "1"
    assert [r.answer for r in trace.rounds] == ["4", "4", "1"]
    assert [r.calls for r in trace.rounds] == [4, 12, 20]
    assert [c.origin for c in trace.chains] == [1, 1, 1, 1] and trace.scored == 12


def test_easy_question_is_answered_without_refinement(server):
    trace = run_loop(server, "an easy question", iterations=3)
    assert len(trace.rounds) == 1 and not trace.rounds[0].hard and trace.answer == "5"
    assert server.request_count == 4 and trace.rounds[0].calls == 4


def test_no_review_ablation_refines_without_reviewer_or_step_scores(server):
    trace = run_loop(server, "a hard question", iterations=1, ablation="no-review")
    assert trace.rounds[0].hard and trace.answer == "7"  # refined as MAgICoRE would be
    refines = server.prompts("refiner")
    assert not server.prompts("reviewer") and len(refines) == 4
    assert all(NO_REVIEW in p and "(Score:" not in p for p in refines)
    assert trace.rounds[1].calls == 4 + 4  # Solver, then the Refiner alone


def test_llm_feedback_ablation_reviews_without_step_scores(server):
    trace = run_loop(server, "a hard question", iterations=1, ablation="llm-feedback")
    assert trace.rounds[0].hard and trace.answer == "7" and trace.rounds[1].calls == 4 + 8
    reviews, refines = server.prompts("reviewer"), server.prompts("refiner")
    assert len(reviews) == len(refines) == 4
    assert all("(Score:" not in p and "below 6/10" not in p and "Check every step" in p for p in reviews)
    assert all("(Score:" not in p and "Teacher feedback:\nfeedback" in p for p in refines)


def test_joint_role_ablation_reviews_and_refines_in_one_call(server):
    trace = run_loop(server, "a hard question", iterations=1, ablation="joint-role")
    assert not server.prompts("reviewer") and not server.prompts("refiner")
    joint = server.prompts("joint")
    assert len(joint) == 4 and all("(Score:" in p and "below 6/10" in p for p in joint)
    # the rewrite is what follows "Corrected solution:", not the feedback before it
    assert [c.text for c in trace.chains] == [FIXED, FIXED, FIXED, HARD[3]] and trace.answer == "7"
    assert trace.rounds[1].calls == 4 + 4


def test_llm_difficulty_ablation_follows_the_models_verdict_every_round(server):
    # the scripted model calls the easy question hard and the hard one easy
    easy = run_loop(server, "an easy question", iterations=2, ablation="llm-difficulty")
    assert [r.hard for r in easy.rounds] == [True, True, True] and easy.rounds[0].difficulty.easy
    assert len(server.prompts("difficulty")) == 1 and easy.rounds[0].calls == 4 + 1
    assert [c.text for c in easy.chains] == [EASY] * 4  # refined twice: the Refiner keeps answering 5
    reviews = len(server.prompts("reviewer"))
    hard = run_loop(server, "a hard question", iterations=2, ablation="llm-difficulty")
    assert [r.hard for r in hard.rounds] == [False] and not hard.rounds[0].difficulty.easy
    assert hard.answer == "4" and len(server.prompts("reviewer")) == reviews  # nothing refined


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
    from scoreflow.magicore.workflow_operator import MagicoreRefine
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
