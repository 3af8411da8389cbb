"""Run one generated workflow: parse, validate, execute under limits, extract the answer.

    code = extract_graph(generator_output)                 # None when there is no <graph>
    result = await run_workflow(code, question.prompt, executor, "code", timeout_s=240,
                                task=task, question=question)
    result.status, result.answer, result.trace

Every outcome is a `WorkflowResult` whose status is one of
    ok             the workflow returned an answer and extraction produced one
    invalid        no <graph> block, or validate_workflow found problems (listed in `error`)
    error          the workflow raised, or made more than `max_calls` operator calls
    timeout        the time limit or the loop-step budget ran out
    executor_error an executor call failed, even if the workflow caught the error
                   (the run says nothing about the workflow then: retry it, do not score it)
    empty          the workflow or the extraction produced no text
so a bad workflow never stops a batch. Cancelling the caller's task still cancels the run.

Isolation. Validated workflow code runs in this process, in a fresh namespace per run whose
builtins are a small whitelist (containers, len/range/sorted/..., a few exception types, a
captured and bounded print); `range` is capped at MAX_RANGE items; the only other names are
`operator` (the family's operator classes) and `asyncio.gather`. The validator has already
rejected imports, double-underscore names, underscore attributes, frame/coroutine
introspection attributes, driving coroutines by hand (`.send`), str.format, dunder
strings, `match`, `**`/`<<`, bare `except` and control flow in `finally` (validate.py).
Loops, function entries and comprehension elements tick the RunContext, which ends the
run at the deadline or after MAX_LOOP_STEPS, even when the loop never awaits; operator
calls are capped. Programs the operators obtain run in the sandbox (separate process),
never here.

Remaining risk, stated plainly: this is a language-level sandbox, and CPython has no
supported way to make one airtight. A single C-level operation on data the workflow built
(`"x" * 10_000_000_000`, doubling a string 40 times in a loop, sorting a huge list) can
use gigabytes or block the event loop, and with it every run sharing the loop, for as long
as it takes; nothing interrupts it before it returns. An escape would need a path from the
exposed objects to a module, frame or event loop that avoids every name and attribute rule
above. The rules are a denylist over a small set of reachable object types (we listed
their public attributes; `.send` on an operator's coroutine was such a path and is now
denied); we know of no other, but this layer is defence against a confused model, not
against an adversary. The generator is a model we train, and everything it writes that
computes runs in the sandbox. For hostile input, run whole workflows in a separate process.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import re
import textwrap
import time
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Awaitable

from scoreflow.executor import ExecutorClient
from scoreflow.tasks.base import Question, Task
from scoreflow.workflow.operators import (MAX_OPERATOR_CALLS, OPERATORS, Extract, RunAborted, RunContext,
                                          TraceEntry, WorkflowConfig, as_text, clip, extraction_kind)
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.validate import TICK_NAME, instrument, validate_workflow

STATUSES = ("ok", "invalid", "error", "timeout", "executor_error", "empty")
MAX_ANSWER_CHARS = 50_000
MAX_PRINT_CHARS = 10_000
MAX_RANGE = 10_000
WORKFLOW_FILENAME = "<workflow>"

_GRAPH = re.compile(r"<graph>(.*?)(?:</graph>|\Z)", re.DOTALL)
_FENCE_LINE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.MULTILINE)
_SAFE_BUILTINS = (
    abs, all, any, bool, dict, enumerate, filter, float, isinstance, len, list, map, max, min, reversed, round,
    set, sorted, str, sum, tuple, zip,
    Exception, ArithmeticError, AssertionError, AttributeError, IndexError, KeyError, LookupError, NameError,
    RuntimeError, TypeError, ValueError, ZeroDivisionError,
)


@dataclass(frozen=True)
class WorkflowResult:
    """One run. `answer` is the extracted final answer ("" unless status is "ok");
    `raw_answer` what run_workflow returned, as text; `trace` every operator call in order
    of completion (the extraction step last, as "Extract"); `printed` the workflow's
    print output (bounded)."""

    answer: str
    status: str
    trace: tuple[TraceEntry, ...]
    error: str | None
    raw_answer: str
    printed: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def llm_calls(self) -> int:
        return sum(e.llm_calls for e in self.trace)

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.trace)

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.trace)


def extract_graph(text: str) -> str | None:
    """The workflow code between <graph> and </graph> (the closing tag may be missing, as
    when sampling stops at it), without Markdown code-fence lines and common indentation;
    None if there is none."""
    found = _GRAPH.search(text)
    code = textwrap.dedent(_FENCE_LINE.sub("", found.group(1))).strip("\n") if found else ""
    return code if code.strip() else None


async def run_workflow(code: str | None, problem: str, executor: ExecutorClient, family: str, timeout_s: float,
                       task: Task | None = None, question: Question | None = None, *, temperature: float = 0.0,
                       max_calls: int = MAX_OPERATOR_CALLS) -> WorkflowResult:
    """Validate and run `code` (None: the generator wrote no <graph> block) on `problem`,
    then extract the answer the task's scorer reads (operators.Extract). `timeout_s`
    bounds the workflow and, separately, the extraction; `temperature` is the executor's
    for generating operators (selection and extraction always use 0); code tasks need
    `task` and `question` for Test and extraction."""
    if family not in FAMILY_OPERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILY_OPERATORS)}")
    start = time.monotonic()
    ctx = RunContext(executor, problem, family, task=task, question=question, temperature=temperature,
                     max_calls=max_calls, deadline=start + timeout_s)
    config = WorkflowConfig(family, executor.model, ctx)
    printed = _PrintBuffer(MAX_PRINT_CHARS)

    def result(status: str, error: str | None = None, raw: str = "", answer: str = "") -> WorkflowResult:
        return WorkflowResult(answer, status, tuple(ctx.trace), error, raw, printed.text(), time.monotonic() - start)

    if code is None:
        return result("invalid", "no <graph> ... </graph> block with code")
    problems = validate_workflow(code, family)
    if problems:
        return result("invalid", "; ".join(problems))
    status, error, value = await _guarded(_execute(code, ctx, config, printed), ctx, timeout_s)
    if status != "ok":
        return result(status, error)
    raw = clip(as_text(value), MAX_ANSWER_CHARS)
    if not raw.strip():
        return result("empty", "the workflow returned no answer", raw)
    kind = extraction_kind(family, getattr(task, "name", None))
    status, error, extracted = await _guarded(Extract(config)(raw=raw, kind=kind), ctx, timeout_s, extraction=True)
    if status != "ok":
        return result(status, error, raw)
    answer = extracted["answer"]
    return result("ok", None, raw, answer) if answer.strip() else result("empty", "extraction found no answer", raw)


async def _guarded(step: Awaitable[Any], ctx: RunContext, timeout_s: float,
                   extraction: bool = False) -> tuple[str, str | None, Any]:
    """(status, error, value) of one awaited step: every failure becomes a status."""
    try:
        value = await asyncio.wait_for(step, timeout_s)
    except (Exception, RunAborted) as e:  # not CancelledError: the caller's cancellation must pass
        value, failure = None, e
    else:
        failure = None
    if ctx.aborted is not None:  # sticky, even when workflow code swallowed the abort
        return ctx.aborted.status, str(ctx.aborted), None
    if ctx.executor_error is not None:
        return "executor_error", f"{type(ctx.executor_error).__name__}: {ctx.executor_error}", None
    if isinstance(failure, asyncio.TimeoutError) or (not extraction and time.monotonic() > ctx.deadline):
        return "timeout", f"did not finish within {timeout_s:g} s", None
    if failure is not None:
        return "error", _describe(failure), None
    return "ok", None, value


async def _execute(code: str, ctx: RunContext, config: WorkflowConfig, printed: _PrintBuffer) -> Any:
    """Define the workflow in a fresh restricted namespace, build it, run it."""
    program = compile(instrument(ast.parse(code)), WORKFLOW_FILENAME, "exec")
    namespace = _namespace(ctx, printed)
    exec(program, namespace)  # validated and instrumented code only (see the module docstring)
    workflow = namespace["Workflow"](config, ctx.problem)
    return await workflow.run_workflow()


def _namespace(ctx: RunContext, printed: _PrintBuffer) -> dict[str, Any]:
    safe = {f.__name__: f for f in _SAFE_BUILTINS}
    safe.update(range=_bounded_range, print=printed.print, __build_class__=builtins.__build_class__)
    return {
        "__builtins__": safe,
        "__name__": "workflow",
        "operator": SimpleNamespace(**{name: OPERATORS[name] for name in FAMILY_OPERATORS[ctx.family]}),
        "asyncio": SimpleNamespace(gather=gather),
        TICK_NAME: ctx.tick,
    }


async def gather(*awaitables: Awaitable[Any]) -> list[Any]:
    """`asyncio.gather` for workflows: the results in order; if one raises, the others are
    cancelled and awaited rather than left running after the workflow ends."""
    tasks: list[asyncio.Future] = []
    try:
        for awaitable in awaitables:
            tasks.append(asyncio.ensure_future(awaitable))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _bounded_range(*args: int) -> range:
    steps = range(*args)
    if len(steps) > MAX_RANGE:
        raise ValueError(f"range() of {len(steps)} items; workflows may use at most {MAX_RANGE}")
    return steps


class _PrintBuffer:
    """The workflow's `print`: output kept up to `limit` characters, the rest counted."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.size = limit, [], 0

    def print(self, *values: Any, sep: str = " ", end: str = "\n") -> None:
        text = str(sep).join(map(str, values)) + str(end)
        room = max(0, self.limit - self.size)
        self.parts.append(text[:room])
        self.size += len(text)

    def text(self) -> str:
        kept = "".join(self.parts)
        return kept if self.size <= self.limit else f"{kept}... [{self.size - self.limit} more characters]"


def _describe(error: BaseException) -> str:
    """Type, message and the workflow line that raised it."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == WORKFLOW_FILENAME]
    where = f" (workflow line {lines[-1]})" if lines else ""
    return clip(f"{type(error).__name__}: {error}{where}", 1000)
