"""The workflow runtime end to end (real loopback server, real sandbox, real benchmark
questions): reference-style workflows, and hostile or broken ones that must end with a
status instead of an escape, a hang or an exception."""

import asyncio
import time

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scoreflow.workflow.run_context import MAX_OPERATOR_CALLS
from scoreflow.workflow.prompts import template_workflow, workflow_source
from scoreflow.workflow.validate import SIMILARITY_THRESHOLDS, TIME_LIMITS_S
from scoreflow.workflow.runtime import (MAX_ANSWER_CHARS, MAX_PRINT_CHARS, STATUSES, extract_graph, run_workflow,
                                        validate_workflow)
from scoreflow.workflow.validate import MAX_WORKFLOW_CHARS



@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def reply(text: str) -> Reply:
    return Reply(body=completion(text))


def run(server, code, problem="What is 2 + 2?", family="math", timeout_s=10.0, **options):
    async def main():
        async with ExecutorClient(server.base_url, "fake-model", api_key="sk-test", backoff_s=0.01,
                                  max_backoff_s=0.02, timeout=5.0) as executor:
            return await run_workflow(code, problem, executor, family, timeout_s, **options)

    result = asyncio.run(main())
    assert result.status in STATUSES
    return result


def body(text: str, family: str = "math") -> str:
    return workflow_source(family, text)


# ----------------------------------------------------------------------------- reference-style workflows

MATH_WORKFLOW = '''Here is my workflow.
<graph>
```python
class Workflow:
    def __init__(self, config, problem):
        self.problem = problem
        self.custom = operator.Custom(config)
        self.programmer = operator.Programmer(config)
        self.sc_ensemble = operator.ScEnsemble(config)
        self.review = operator.Review(config)

    async def run_workflow(self):
        solutions = []
        for i in range(2):
            solution = await self.custom(instruction="Solve the problem step by step.")
            solutions.append(solution["response"])
        program = await self.programmer(analysis=solutions[0])
        solutions.append("The program computed " + program["output"])
        best = await self.sc_ensemble(solutions=solutions)
        reviewed = await self.review(pre_solution=best["response"])
        return reviewed["solution"]
```
</graph>'''


def test_math_ensemble_programmer_review_workflow(server):
    task = load_task("gsm8k", "validate")
    question = task.questions[0]  # Carol and Jennifer: 100 - (20 + 44) = 36
    server.script(reply("20 + 44 = 64 signatures, so they need 100 - 64 = 36 more."),
                  reply("They need 38 more."),
                  reply("```python\ndef solve():\n    return 100 - (20 + 44)\n```"),
                  reply("A and C agree on 36.\nChoice: C"),
                  reply("<review>The computation is right.</review>\n"
                        "<solution>They need 100 - 64 = 36 more signatures: \\boxed{36}</solution>"))
    result = run(server, extract_graph(MATH_WORKFLOW), question.prompt, task=task, question=question)
    assert (result.status, result.error, result.answer) == ("ok", None, "36")
    assert task.score(question, result.answer) == 1.0
    assert [e.operator for e in result.trace] == ["Custom", "Custom", "Programmer", "ScEnsemble", "Review", "Extract"]
    assert result.trace[2].sandbox_runs == 1 and "'output': '36'" in result.trace[2].output
    assert "C:\nThe program computed 36" in server.requests[3].body["messages"][-1]["content"]
    assert server.request_count == 5 and result.llm_calls == 5  # the boxed answer needs no extraction call
    assert (result.prompt_tokens, result.completion_tokens) == (50, 25)
    assert result.raw_answer.endswith("\\boxed{36}")


CODE_WORKFLOW = body('''
solutions = []
for i in range(3):
    solution = await self.custom_code_generate(instruction="Implement the function carefully.")
    solutions.append(solution["response"])
best = await self.sc_ensemble(solutions=solutions)
tested = await self.test(solution=best["response"])
if tested["result"]:
    return tested["solution"]
return best["response"]
''', "code")


def test_code_ensemble_test_workflow_on_humaneval(server):
    task = load_task("humaneval", "validate")
    question = next(q for q in task.questions if q.row["entry_point"] == "can_arrange")
    correct = question.prompt + question.row["canonical_solution"]
    wrong = "```python\ndef can_arrange(arr):\n    return -1\n```"
    server.script(reply(wrong), reply(f"```python\n{correct}\n```"), reply(wrong.replace("-1", "len(arr)")),
                  reply("Choice: A"),  # picks a wrong one: Test must repair it
                  reply(f"The loop over neighbours was missing.\n```python\n{correct}\n```"))
    result = run(server, CODE_WORKFLOW, question.prompt, "code", task=task, question=question)
    assert result.status == "ok", result.error
    assert asyncio.run(task.ascore(question, result.answer)) == 1.0
    assert [e.operator for e in result.trace] == ["CustomCodeGenerate"] * 3 + ["ScEnsemble", "Test", "Extract"]
    tested = result.trace[4]
    assert (tested.llm_calls, tested.sandbox_runs) == (1, 2) and "'result': True" in tested.output
    assert "AssertionError" in server.requests[4].body["messages"][-1]["content"]


QA_WORKFLOW = body('''
answers = []
for i in range(3):
    result = await self.answer_generate(input=self.problem)
    answers.append(result["answer"])
best = await self.sc_ensemble(solutions=answers)
return best["response"]
''', "qa")


def test_qa_answer_ensemble(server):
    task = load_task("hotpotqa", "validate")
    question = task.questions[0]
    gold = question.gold
    server.script(reply(f"<thought>VIVA Media GmbH</thought><answer>{gold}</answer>"),
                  reply("<thought>guess</thought><answer>Germany</answer>"),
                  reply(f"<thought>GmbH</thought><answer>{gold}</answer>"),
                  reply("A and C agree.\nChoice: C"))
    result = run(server, QA_WORKFLOW, question.prompt, "qa", task=task, question=question)
    assert (result.status, result.answer) == ("ok", gold)
    assert task.score(question, result.answer) == 1.0
    assert [e.operator for e in result.trace] == ["AnswerGenerate"] * 3 + ["ScEnsemble", "Extract"]
    assert server.request_count == 4


def test_gather_runs_operator_calls_concurrently():
    code = body('''
results = await asyncio.gather(*[self.answer_generate() for i in range(3)])
print(len(results), "answers")
return results[0]["answer"]
''', "qa")
    with FakeOpenAIServer(delay_s=0.3) as server:
        result = run(server, code, "Capital of France?", "qa")
        assert result.status == "ok" and server.max_in_flight == 3
        assert result.printed == "3 answers\n" and len(result.trace) == 4


def test_template_runs_and_extracts_through_the_executor(server):
    server.script(reply("Two plus two is four."), reply("\\boxed{4}"))
    result = run(server, template_workflow("math"))
    assert result.ok and (result.answer, result.raw_answer) == ("\\boxed{4}", "Two plus two is four.")
    assert "Copy the final answer" in server.requests[1].body["messages"][-1]["content"]


# ----------------------------------------------------------------------------- rejected before running

def test_extract_graph():
    assert extract_graph("text <graph>\n```python\nclass Workflow:\n    pass\n```\n</graph> more") \
        == "class Workflow:\n    pass"
    assert extract_graph("<graph>\nclass Workflow:\n    pass\n") == "class Workflow:\n    pass"  # stopped at </graph>
    assert extract_graph("<graph>\n    class Workflow:\n        pass\n</graph>") == "class Workflow:\n    pass"
    assert extract_graph("<graph>\nclass Workflow:\n    pass\n\n<graph>\nprose") == "class Workflow:\n    pass"  # closed by a stray <graph>
    assert extract_graph("no graph here") is None and extract_graph("<graph>\n```\n```</graph>") is None


HOSTILE = {
    "import": ("import os\nreturn os.getcwd()", "imports are not allowed"),
    "from-import": ("from os import system\nreturn 'x'", "imports are not allowed"),
    "__import__": ("return __import__('os').system('true')", "double underscore"),
    "class-bases": ("return ().__class__.__bases__[0].__subclasses__()", "attribute .__class__"),
    "globals-of-a-method": ("return self.custom.__call__.__globals__", "attribute .__call__"),
    "private-context": ("return self.custom._ctx.executor", "attribute ._ctx"),
    "coroutine-frame": ("c = self.custom(instruction='x')\nreturn c.cr_frame.f_globals", "attribute .cr_frame"),
    "coroutine-send": ("c = self.custom(instruction='x')\nreturn str(c.send(None))", "attribute .send"),
    "future-loop": ("return str(self.custom.get_loop())", "attribute .get_loop"),
    "shadow-the-tick": ("def spin(__sf_tick__):\n    while True:\n        pass\nspin(str)", "the name __sf_tick__"),
    "dunder-except-name": ("try:\n    pass\nexcept Exception as __x:\n    pass\nreturn 'x'", "the name __x"),
    "dunder-string": ("d = {}\nreturn d['__builtins__']", "strings containing '__'"),
    "format-fields": ("return '{0.x}'.format(self)", "attribute .format"),
    "getattr": ("return getattr(self, 'custom')", "getattr is not allowed"),
    "exec": ("exec('x = 1')\nreturn 'x'", "exec is not allowed"),
    "eval": ("return eval('1 + 1')", "eval is not allowed"),
    "open": ("return open('/etc/passwd').read()", "open is not allowed"),
    "match": ("match self:\n    case str():\n        pass\nreturn 'x'", "match statements"),
    "bare-except": ("try:\n    pass\nexcept:\n    pass\nreturn 'x'", "bare `except:`"),
    "catch-base": ("try:\n    pass\nexcept BaseException:\n    pass\nreturn 'x'", "BaseException is not allowed"),
    "finally-return": ("try:\n    pass\nfinally:\n    return 'x'", "inside `finally`"),
    "power": ("return str(2 ** 100000)", "operator ** is not allowed"),
    "class-attribute": ("operator.Custom.name = 'hacked'\nreturn 'x'", "only attributes of self"),
    "rebind-self": ("self = operator.Custom\nself.name = 'hacked'\nreturn 'x'", "`self` may only be"),
    "self-in-a-lambda": ("f = lambda self: self\nreturn 'x'", "`self` may only be"),
    "loop-over-self": ("for self in [operator.Custom]:\n    pass\nreturn 'x'", "`self` may only be"),
    "unbound-method": ("return str(Workflow.run_workflow)", "the class Workflow may only be called"),
    "too-deep-to-check": ("return " + "+".join(["1"] * 5000), "nested too deeply to check"),
    "wrong-family": ("t = operator.Test(self)\nreturn 'x'", "operator.Test is not available"),
    "int-snippet": ("return str(int('4'))", "forbidden snippet 'int('"),
    "split-snippet": ('return self.problem.split(" ")[0]', "forbidden snippet \".split(' ')\""),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_workflows_are_rejected_without_running(server, name):
    text, problem = HOSTILE[name]
    code = body(text)
    assert any(problem in p for p in validate_workflow(code, "math")), validate_workflow(code, "math")
    result = run(server, code)
    assert result.status == "invalid" and problem in result.error
    assert server.request_count == 0 and result.trace == ()


@pytest.mark.parametrize("code, problem", [
    ("x = 1", "no top-level `class Workflow`"),
    ("class Workflow:\n    def __init__(self, config, problem):\n        pass\n", "async def run_workflow(self)"),
    ("class Workflow:\n    def __init__(self, config, problem):\n        pass\n    def run_workflow(self):\n"
     "        return 'x'\n", "run_workflow must be `async def"),
    ("class Workflow:\n    def __init__(self, config):\n        pass\n    async def run_workflow(self):\n"
     "        return 'x'\n", "def __init__(self, config, problem)"),
    ("class Workflow(dict):\n    pass\n", "may not have base classes"),
    (template_workflow("math") + "\nprint('top level')\n", "only classes, functions and assignments"),
    (template_workflow("math") + "\n    def __del__(self):\n        pass\n", "the method __del__ is not allowed"),
    ("class Workflow:\n    def broken(:\n", "syntax error"),
    ("x = 'a'\n" * MAX_WORKFLOW_CHARS, f"the limit is {MAX_WORKFLOW_CHARS}"),
])
def test_malformed_workflows_are_invalid(server, code, problem):
    result = run(server, code)
    assert result.status == "invalid" and problem in result.error, result.error


def test_missing_graph_block_is_invalid(server):
    result = run(server, extract_graph("I would solve it step by step."))
    assert (result.status, result.error) == ("invalid", "no <graph> ... </graph> block with code")


def test_print_is_allowed_and_captured(server):
    assert validate_workflow(body("print('int', 1)\nreturn 'x'"), "math") == []


def test_spec_a3_settings():
    assert TIME_LIMITS_S == {"math": 120.0, "qa": 120.0, "code": 240.0}
    assert SIMILARITY_THRESHOLDS == {"math": 0.75, "gsm8k": 0.8, "drop": 0.75, "hotpotqa": 0.75,
                                     "humaneval": None, "mbpp": None}


# ----------------------------------------------------------------------------- contained while running

def test_cpu_loop_without_awaits_ends_with_timeout(server):
    result = run(server, body("while True:\n    x = 1"))
    assert result.status == "timeout" and "loop steps" in result.error


def test_slow_endless_loop_hits_the_deadline(server):
    start = time.monotonic()
    result = run(server, body("while True:\n    x = sorted(range(5000))"), timeout_s=0.3)
    assert result.status == "timeout" and "time limit" in result.error
    assert time.monotonic() - start < 3.0


def test_endless_recursion_and_comprehensions_are_bounded(server):
    recursion = workflow_source("math", "return self.loop(0)",
                                "def loop(self, n):\n    return self.loop(n) + self.loop(n)")
    assert run(server, recursion).status == "error"  # RecursionError, an ordinary Exception
    nested = body("return str(len([i for i in range(10000) for j in range(10000)]))")
    assert run(server, nested).status == "timeout"


def test_swallowed_abort_still_counts(server):
    code = body("while True:\n    try:\n        while True:\n            pass\n    except Exception:\n        pass")
    result = run(server, code)
    assert result.status == "timeout"


def test_runaway_operator_calls_hit_the_cap(server):
    result = run(server, body("while True:\n    await self.custom(instruction='again')"))
    assert result.status == "error" and f"more than {MAX_OPERATOR_CALLS} operator calls" in result.error
    assert server.request_count == MAX_OPERATOR_CALLS


def test_huge_output_is_bounded(server):
    code = body("s = 'ab'\nfor i in range(22):\n    s = s + s\n    print(s)\nreturn s", "qa")
    result = run(server, code, family="qa")
    assert result.status == "ok"
    assert MAX_ANSWER_CHARS <= len(result.raw_answer) < MAX_ANSWER_CHARS + 100
    assert MAX_PRINT_CHARS <= len(result.printed) < MAX_PRINT_CHARS + 100


def test_unlisted_builtins_do_not_exist(server):
    result = run(server, body("return str(id(self))"))
    assert result.status == "error" and "NameError" in result.error
    result = run(server, body("return str(len(range(1000000)))"))
    assert result.status == "error" and "at most 10000" in result.error


def test_a_raising_workflow_reports_type_message_and_line(server):
    code = body("x = 1\nraise ValueError('boom')")
    line = code.splitlines().index("        raise ValueError('boom')") + 1
    result = run(server, code)
    assert result.status == "error" and result.error == f"ValueError: boom (workflow line {line})"
    broken_init = template_workflow("math").replace("self.problem = problem", "self.problem = problem[99]")
    assert "IndexError" in run(server, broken_init).error


def test_empty_answer(server):
    assert run(server, body("return None")).status == "empty"
    assert run(server, body("return {'response': '  '}")).status == "empty"


# ----------------------------------------------------------------------------- executor failures

def test_executor_auth_error_is_a_status_with_the_error_recorded(server):
    server.script(Reply(401))
    result = run(server, template_workflow("math"))
    assert result.status == "executor_error" and result.error.startswith("AuthenticationError: HTTP 401")
    assert result.trace[0].error.startswith("AuthenticationError") and result.answer == ""


def test_empty_executor_reply_is_an_error_not_an_empty_answer(server):
    server.script(reply(""), reply(""))  # the client retries an empty reply once
    result = run(server, template_workflow("math"))
    assert result.status == "executor_error" and "EmptyReplyError" in result.error


def test_caught_executor_error_still_marks_the_run(server):
    server.script(Reply(401))
    code = body("try:\n    await self.custom(instruction='x')\nexcept Exception:\n    pass\nreturn 'fallback'")
    result = run(server, code)
    assert result.status == "executor_error" and server.request_count == 1


def test_executor_error_during_extraction(server):
    server.script(reply("Two plus two is four."), Reply(401))
    result = run(server, template_workflow("math"))
    assert result.status == "executor_error" and result.raw_answer == "Two plus two is four."
    assert [e.operator for e in result.trace] == ["Custom", "Extract"]
