"""Operators and the extraction step against the real loopback server and the real sandbox:
what each sends, how it parses replies, what it records, and that executor errors stay typed."""

import asyncio
import json
import subprocess
import sys

import pytest

from scoreflow.executor import AuthenticationError, ExecutorClient
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scoreflow.workflow.context import RunAborted, WorkflowConfig, as_text
from scoreflow.workflow.host import OPERATORS, PLUGIN_MODULES, operator_class, register_operator
from scoreflow.workflow.operators import Extract, Operator, extraction_kind, parameter_list
from scoreflow.workflow.replies import chosen_letter, code_block, sanitize_code
from scoreflow.workflow.run_context import Call, RunContext
from scoreflow.workflow.prompts import ATTRIBUTES, EXTRA_OPERATORS, FAMILY_OPERATORS, OPERATOR_GUIDES

PROBLEM = "What is 6 * 7?"


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture(scope="module")
def humaneval():
    task = load_task("humaneval", "validate")
    question = next(q for q in task.questions if q.row["entry_point"] == "can_arrange")
    return task, question


def reply(text: str) -> Reply:
    return Reply(body=completion(text))


def operate(server, family, body, *, problem=PROBLEM, **context):
    """Await `body(config)` with a fresh run bound to `problem`; (value or exception, context)."""
    async def main():
        async with ExecutorClient(server.base_url, "fake-model", api_key="sk-test", backoff_s=0.01,
                                  max_backoff_s=0.02, timeout=5.0) as executor:
            ctx = RunContext(executor, problem, family, **context)
            try:
                value = await body(WorkflowConfig(family, executor.model, ctx))
            except (Exception, RunAborted) as e:
                value = e
            return value, ctx

    return asyncio.run(main())


def prompt_of(server, i=-1) -> str:
    return server.requests[i].body["messages"][-1]["content"]


def test_custom_joins_instruction_and_problem_and_traces_the_call(server):
    server.script(reply("42"))
    result, ctx = operate(server, "math", lambda config: OPERATORS["Custom"](config)(instruction="Multiply."))
    assert result == {"response": "42"}
    assert prompt_of(server) == f"Multiply.\n\n{PROBLEM}"
    assert server.requests[0].body["temperature"] == 0.0
    (entry,) = ctx.trace
    assert (entry.operator, entry.output, entry.error) == ("Custom", repr({"response": "42"}), None)
    assert entry.inputs == {"instruction": "Multiply.", "input": "None"}
    assert (entry.llm_calls, entry.prompt_tokens, entry.completion_tokens, entry.sandbox_runs) == (1, 10, 5, 0)


def test_text_inputs_accept_result_dicts_and_the_run_temperature_applies(server):
    async def body(config):
        custom = OPERATORS["Custom"](config)
        return await custom(instruction="Check:", input={"thought": "t", "answer": "6 * 7 = 42"})

    operate(server, "math", body, temperature=0.7)
    assert prompt_of(server) == "Check:\n\n6 * 7 = 42"
    assert server.requests[0].body["temperature"] == 0.7


def test_answer_generate_parses_tags_and_falls_back_to_the_last_line(server):
    server.script(reply("<thought>six sevens</thought>\n<answer>42</answer>"), reply("Thinking...\nIt is 42"))

    async def body(config):
        generate = OPERATORS["AnswerGenerate"](config)
        return [await generate(), await generate(input="Other question")]

    (tagged, untagged), _ = operate(server, "qa", body)
    assert tagged == {"thought": "six sevens", "answer": "42"}
    assert untagged == {"thought": "Thinking...\nIt is 42", "answer": "It is 42"}
    assert prompt_of(server, 0).startswith(PROBLEM) and prompt_of(server, 1).startswith("Other question")


def test_programmer_runs_solve_in_the_sandbox_and_feeds_the_error_back(server):
    server.script(reply("```python\ndef solve():\n    return 6 * 7 / 0\n```"),
                  reply("Fixed:\n```python\ndef solve():\n    return 6 * 7\n```"))
    result, ctx = operate(server, "math", lambda config: OPERATORS["Programmer"](config)(analysis="multiply"))
    assert result == {"code": "def solve():\n    return 6 * 7", "output": "42"}
    retry = server.requests[1].body["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert "multiply" in retry[0]["content"] and "ZeroDivisionError" in retry[2]["content"]
    assert (ctx.trace[0].llm_calls, ctx.trace[0].sandbox_runs) == (2, 2)


def test_programmer_gives_up_after_three_tries_with_the_error_as_output(server):
    server.script(*[reply("```python\ndef solve():\n    raise ValueError('no luck')\n```")] * 3)
    result, ctx = operate(server, "math", lambda config: OPERATORS["Programmer"](config)())
    assert result["output"].startswith("Error: ") and "ValueError: no luck" in result["output"]
    assert server.request_count == 3 and ctx.trace[0].sandbox_runs == 3


@pytest.mark.parametrize("text, index", [
    ("They agree on 42.\nChoice: B", 1), ("The best is (C).", 2), ("B", 1), ("(A).", 0), ("Answer is C", 2),
    ("Candidate A is right; choice: D", 0),  # D names no candidate of three: the earlier A counts
    ("A careful comparison shows nothing.", None), ("Choice: **B**", 1),
])
def test_chosen_letter(text, index):
    assert chosen_letter(text, 3) == index


def test_sc_ensemble_picks_by_letter_skips_identical_and_falls_back_to_majority(server):
    server.script(reply("B and C agree.\nChoice: C"), reply("I cannot decide."))

    async def body(config):
        ensemble = OPERATORS["ScEnsemble"](config)
        return [await ensemble(solutions=["41", "42", {"response": "42!"}]),
                await ensemble(solutions=["same", "same"]),
                await ensemble(solutions=["x", "y", "y"])]

    results, ctx = operate(server, "math", body, temperature=0.9)
    assert results == [{"response": "42!"}, {"response": "same"}, {"response": "y"}]
    assert server.request_count == 2  # identical candidates need no call
    assert "A:\n41\n\nB:\n42\n\nC:\n42!" in prompt_of(server, 0)
    assert server.requests[0].body["temperature"] == 0.0  # selection is deterministic
    assert [e.llm_calls for e in ctx.trace] == [1, 0, 1]


def test_sc_ensemble_rejects_an_empty_list(server):
    error, _ = operate(server, "math", lambda config: OPERATORS["ScEnsemble"](config)(solutions=[]))
    assert isinstance(error, ValueError) and "1 to 26 solutions" in str(error)


def test_review_returns_critique_and_revision_or_keeps_the_input(server):
    server.script(reply("<review>Step 2 is wrong.</review>\n<solution>6 * 7 = 42</solution>"), reply("Looks fine."))

    async def body(config):
        review = OPERATORS["Review"](config)
        return [await review(pre_solution="6 * 7 = 48"), await review(pre_solution="6 * 7 = 42")]

    (revised, kept), _ = operate(server, "math", body)
    assert revised == {"review": "Step 2 is wrong.", "solution": "6 * 7 = 42"}
    assert kept == {"review": "Looks fine.", "solution": "6 * 7 = 42"}
    assert "6 * 7 = 48" in prompt_of(server, 0) and PROBLEM in prompt_of(server, 0)


def test_custom_code_generate_extracts_the_block_defining_the_entry_point(server, humaneval):
    task, question = humaneval
    server.script(reply("Helper:\n```python\ndef helper():\n    pass\n```\nMain:\n"
                        "```python\ndef can_arrange(arr):\n    return -1\n```\nDone."))
    generate = lambda config: OPERATORS["CustomCodeGenerate"](config)(instruction="Be careful.")  # noqa: E731
    result, _ = operate(server, "code", generate, problem=question.prompt, task=task, question=question)
    assert result == {"response": "def can_arrange(arr):\n    return -1"}
    assert "`can_arrange`" in prompt_of(server) and prompt_of(server).startswith("Be careful.")


def test_custom_code_generate_needs_an_entry_point_without_a_code_question(server):
    error, _ = operate(server, "code", lambda config: OPERATORS["CustomCodeGenerate"](config)(instruction="x"))
    assert isinstance(error, ValueError) and "entry_point" in str(error) and server.request_count == 0


def test_test_operator_repairs_a_failing_solution_with_the_public_tests(server, humaneval):
    task, question = humaneval
    correct = question.prompt + question.row["canonical_solution"]
    server.script(reply(f"The loop was missing.\n```python\n{correct}\n```"))
    result, ctx = operate(server, "code", lambda config: OPERATORS["Test"](config)(
        solution="def can_arrange(arr):\n    return -1"), problem=question.prompt, task=task, question=question)
    assert result == {"result": True, "solution": correct.strip()}
    assert "AssertionError" in prompt_of(server) and "assert candidate([1,2,4,3,5]) == 3" in prompt_of(server)
    assert (ctx.trace[0].llm_calls, ctx.trace[0].sandbox_runs) == (1, 2)


def test_test_operator_stops_after_three_repairs(server, humaneval):
    task, question = humaneval
    wrong = "```python\ndef can_arrange(arr):\n    return 0\n```"
    server.script(*[reply(wrong)] * 3)
    result, ctx = operate(server, "code", lambda config: OPERATORS["Test"](config)(solution=wrong),
                          problem=question.prompt, task=task, question=question)
    assert result == {"result": False, "solution": "def can_arrange(arr):\n    return 0"}
    assert (ctx.trace[0].llm_calls, ctx.trace[0].sandbox_runs) == (3, 4)


def extract(server, raw, kind, **context):
    return operate(server, "math", lambda config: Extract(config)(raw=raw, kind=kind), **context)


@pytest.mark.parametrize("raw, kind, answer", [
    ("So x = 2 and the answer is \\boxed{\\frac{1}{2}}.", "boxed", "\\boxed{\\frac{1}{2}}"),
    (" 1,234 ", "number", "1234"),
    ("The total is \\boxed{36}.", "number", "36"),
    ("-0.5", "number", "-0.5"),
    ("Answer: Gesellschaft mit beschränkter Haftung", "concise", "Gesellschaft mit beschränkter Haftung"),
])
def test_extraction_fast_path_needs_no_call(server, raw, kind, answer):
    result, ctx = extract(server, raw, kind)
    assert result == {"answer": answer} and server.request_count == 0
    assert ctx.trace[0].operator == "Extract" and ctx.trace[0].llm_calls == 0


@pytest.mark.parametrize("kind, executor_reply, answer", [
    ("boxed", "\\boxed{42}", "\\boxed{42}"),
    ("number", "42.", "42"),
    ("concise", "The answer is Paris", "Paris"),
    ("concise", "Paris, which is the capital of France and its largest city", "Paris, which is the capital of "
                                                                             "France and its largest city"),
])
def test_extraction_asks_the_executor_when_the_answer_is_not_in_form(server, kind, executor_reply, answer):
    server.script(reply(executor_reply))
    raw = "Long reasoning.\nSeveral steps, 7 of them.\nIn the end it is 42, the capital Paris."
    result, _ = extract(server, raw, kind, temperature=0.8)
    assert result == {"answer": answer}
    assert raw in prompt_of(server) and PROBLEM in prompt_of(server)
    assert server.requests[0].body["temperature"] == 0.0


def test_code_extraction_is_rule_based(server, humaneval):
    task, question = humaneval
    raw = ("Here you go:\n```python\nimport math\n\ndef can_arrange(arr):\n    return -1\n\n"
           "print(can_arrange([1]))\nassert can_arrange([]) == -1\n```")
    result, _ = operate(server, "code", lambda config: Extract(config)(raw=raw, kind="code"),
                        task=task, question=question)
    assert result == {"answer": "import math\n\ndef can_arrange(arr):\n    return -1"}
    assert server.request_count == 0


def test_extraction_kind_by_task_then_family():
    assert [extraction_kind("math", "gsm8k"), extraction_kind("math", "math"), extraction_kind("qa", "drop"),
            extraction_kind("code", "mbpp"), extraction_kind("math", None)] == ["number", "boxed", "concise",
                                                                               "code", "boxed"]


def test_executor_errors_propagate_typed_and_are_recorded(server):
    server.script(Reply(401))
    error, ctx = operate(server, "math", lambda config: OPERATORS["Custom"](config)(instruction="x"))
    assert isinstance(error, AuthenticationError) and "OPENAI_API_KEY" in str(error)
    assert ctx.executor_error is error
    assert ctx.trace[0].error.startswith("AuthenticationError: HTTP 401") and ctx.trace[0].output is None


def test_after_an_executor_error_later_calls_abort(server):
    server.script(Reply(401))

    async def body(config):
        custom = OPERATORS["Custom"](config)
        try:
            await custom(instruction="x")
        except Exception:  # a workflow that swallows the error cannot go on
            pass
        await custom(instruction="y")

    error, _ = operate(server, "math", body)
    assert isinstance(error, RunAborted) and error.status == "executor_error" and server.request_count == 1


def test_operator_call_budget(server):
    async def body(config):
        custom = OPERATORS["Custom"](config)
        for _ in range(3):
            await custom(instruction="again")

    error, ctx = operate(server, "math", body, max_calls=2)
    assert isinstance(error, RunAborted) and error.status == "error" and "more than 2 operator calls" in str(error)
    assert server.request_count == 2 and len(ctx.trace) == 2


def test_wrong_arguments_name_the_signature(server):
    error, _ = operate(server, "math", lambda config: OPERATORS["Review"](config)(solution="x"))
    assert isinstance(error, TypeError) and "Review(pre_solution, problem=None)" in str(error)
    error, _ = operate(server, "math", lambda config: OPERATORS["Custom"](None))
    assert isinstance(error, TypeError) and "config" in str(error)


def test_the_guide_matches_the_operators():
    for family, names in FAMILY_OPERATORS.items():
        for name in names:
            assert parameter_list(operator_class(name)) == OPERATOR_GUIDES[name].parameters, name
            assert ATTRIBUTES[name]
    assert set(OPERATORS) == {name for names in FAMILY_OPERATORS.values() for name in names}
    assert set(PLUGIN_MODULES) == set(EXTRA_OPERATORS)  # every operator a run may add is a plugin


def test_a_plugin_is_imported_by_the_first_host_that_offers_it():
    """The runtime imports no application: MagicoreRefine's module (MAgICoRE) is loaded only when a
    host is built for a family that offers it, and registers the operator itself."""
    code = """
import json, sys
from scoreflow.workflow import runtime
from scoreflow.workflow.context import WorkflowConfig
from scoreflow.workflow.host import OperatorHost
from scoreflow.workflow.run_context import RunContext
loaded = lambda: sorted(m for m in sys.modules if m.startswith("scoreflow.magicore"))
def host(family):
    return OperatorHost(WorkflowConfig(family, "m", RunContext(None, "p", family)))
before, qa = loaded(), sorted(host("qa").operators)
refine = host("math").operators["MagicoreRefine"]
print(json.dumps([before, qa, refine.__module__, refine.name, "scoreflow.magicore.workflow_operator" in loaded()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], ["AnswerGenerate", "Custom", "Review", "ScEnsemble"],
                                      "scoreflow.magicore.workflow_operator", "MagicoreRefine", True]


def test_the_registry_refuses_a_taken_name_and_names_a_missing_operator():
    class Custom(Operator):
        async def _run(self, call: Call) -> dict:
            return {}

    with pytest.raises(ValueError, match="'Custom' is already registered"):
        register_operator(Custom)
    assert OPERATORS["Custom"] is not Custom
    with pytest.raises(LookupError, match="no operator 'Nope' is registered"):
        operator_class("Nope")


def test_text_helpers():
    assert as_text({"thought": "t", "answer": "a"}) == "a" and as_text(("x", 0.01)) == "x"
    assert as_text(["a", {"response": "b"}]) == "a\n\nb" and as_text(None) == "" and as_text(3) == "3"
    assert code_block("no fences here ") == "no fences here"
    assert code_block("```python\ndef f():\n    return 1\n") == "def f():\n    return 1"  # unclosed fence
    assert sanitize_code("def f(:\n") == "def f(:\n"
    assert sanitize_code("x = 1\nif __name__ == '__main__':\n    print(x)\n") == "x = 1"
