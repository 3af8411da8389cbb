"""Every static baseline (PAPERS.md §S6) is a valid workflow and runs end to end, through the same
runtime, on a real MATH and a real HumanEval question against the loopback server."""

import asyncio
import itertools
import zlib

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import CHAT_PATH, FakeOpenAIServer, Reply, completion
from scoreflow.workflow.static_baselines import baseline_workflow, baselines_for
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.runtime import run_workflow, validate_workflow



class RoleServer(FakeOpenAIServer):
    """The loopback server answering by content: `respond(prompt, sampled) -> text` (the
    last message; whether the request samples, temperature > 0) replaces the default echo.
    Deterministic replies that do not depend on the order requests arrive in."""

    def __init__(self, respond, **options):
        super().__init__(**options)
        self.respond = respond

    def _default_reply(self, path, body):
        if path != CHAT_PATH:
            return super()._default_reply(path, body)
        text = self.respond(body["messages"][-1]["content"], body.get("temperature", 0) > 0)
        return Reply(body=completion(*[text] * int(body.get("n") or 1)))


def variant(prompt: str, sampled: bool) -> str:
    """A tag per prompt, so different instructions give different (equally right) texts;
    sampled requests get a fresh tag each time, like real samples."""
    return f"{zlib.crc32(prompt.encode()) % 1000}" + (f"-{next(SAMPLES)}" if sampled else "")


SAMPLES = itertools.count()


def math_executor(prompt: str, sampled: bool) -> str:
    if "define a function `solve()`" in prompt:  # the Programmer operator
        return '```python\ndef solve():\n    return "Each large angle measures \\\\boxed{135} degrees."\n```'
    if "Choice: <letter>" in prompt:
        return "They all reach 135 degrees.\nChoice: B"
    if "<solution>" in prompt:
        return "<review>Correct.</review>\n<solution>Each large angle measures \\boxed{135} degrees.</solution>"
    return f"Approach {variant(prompt, sampled)}: the five angles sum to 540, so each large angle is \\boxed{{135}}."


@pytest.fixture(scope="module")
def math_question():
    task = load_task("math", "validate")
    return task, next(q for q in task.questions if q.gold == "135")


@pytest.fixture(scope="module")
def code_question():
    task = load_task("humaneval", "validate")
    return task, next(q for q in task.questions if q.row["entry_point"] == "can_arrange")


def run(server, code, question, family, task, temperature=0.0):
    async def main():
        async with ExecutorClient(server.base_url, "fake-model", api_key="sk-test", timeout=5.0) as executor:
            return await run_workflow(code, question.prompt, executor, family, 60.0, task, question,
                                      temperature=temperature)

    return asyncio.run(main())


@pytest.mark.parametrize("family", FAMILY_OPERATORS)
def test_every_baseline_validates(family):
    for name in baselines_for(family):
        assert validate_workflow(baseline_workflow(name, family), family) == []


def test_operator_baselines_run_only_where_their_operator_is():
    assert baselines_for("math")[-1] == "programmer" and baselines_for("code")[-1] == "test"
    assert "programmer" not in baselines_for("qa") and "test" not in baselines_for("qa")
    with pytest.raises(ValueError, match="runs on code tasks only, not on math tasks"):
        baseline_workflow("test", "math")


def test_unknown_baseline_or_family():
    with pytest.raises(ValueError, match="choose one of io, cot"):
        baseline_workflow("tot", "math")
    with pytest.raises(ValueError, match="unknown task family"):
        baseline_workflow("io", "vision")


# At temperature 0 the five CoT-SC samples are identical, and ScEnsemble needs no call for them.
EXPECTED_CALLS = {"io": 1, "cot": 1, "cot_sc": 5, "medprompt": 8, "multipersona": 7, "self_refine": 3,
                  "programmer": 1, "test": 1}


@pytest.mark.parametrize("name", baselines_for("math"))
def test_baseline_solves_a_math_question(name, math_question):
    task, question = math_question
    with RoleServer(math_executor) as server:
        result = run(server, baseline_workflow(name, "math"), question, "math", task)
    assert (result.status, result.answer) == ("ok", "\\boxed{135}"), result.error
    assert task.score(question, result.answer) == 1.0
    assert result.trace[-1].operator == "Extract" and result.trace[-1].llm_calls == 0  # already boxed
    assert server.request_count == result.llm_calls == EXPECTED_CALLS[name]


@pytest.mark.parametrize("name", baselines_for("code"))
def test_baseline_solves_a_humaneval_question(name, code_question):
    task, question = code_question
    correct = question.prompt + question.row["canonical_solution"]

    def code_executor(prompt: str, sampled: bool) -> str:
        if "Choice: <letter>" in prompt:
            return "Choice: A"
        return f"```python\n# approach {variant(prompt, sampled)}\n{correct}\n```"

    with RoleServer(code_executor) as server:
        result = run(server, baseline_workflow(name, "code"), question, "code", task)
    assert result.status == "ok", result.error
    assert result.answer.startswith("# approach") and "def can_arrange(arr):" in result.answer
    assert asyncio.run(task.ascore(question, result.answer)) == 1.0
    assert server.request_count == result.llm_calls == EXPECTED_CALLS[name]


def test_cot_sc_samples_at_the_run_temperature_and_selects_at_zero(math_question):
    task, question = math_question
    with RoleServer(math_executor) as server:
        result = run(server, baseline_workflow("cot_sc", "math"), question, "math", task, temperature=0.7)
    assert result.status == "ok"
    assert [r.body["temperature"] for r in server.requests] == [0.7] * 5 + [0.0]


def test_medprompt_votes_over_five_orders(math_question):
    task, question = math_question
    with RoleServer(math_executor) as server:
        result = run(server, baseline_workflow("medprompt", "math"), question, "math", task)
    answers = [e.output for e in result.trace[:3]]
    assert len(set(answers)) == 3  # three differently worded instructions
    orders = []
    for request in server.requests[3:]:
        prompt = request.body["messages"][-1]["content"]
        orders.append(tuple(sorted(range(3), key=lambda i: prompt.index(approach_of(result, i)))))
    assert len(set(orders)) == 5  # every vote saw the answers in a different order


def approach_of(result, i: int) -> str:
    """The "Approach N:" opening of the i-th answer in a run's trace."""
    return "Approach " + result.trace[i].output.split("Approach ")[1].split(":")[0] + ":"
