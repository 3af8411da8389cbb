"""Run one generated workflow: parse, validate, execute isolated, extract the answer.

    code = extract_graph(generator_output)                 # None when there is no <graph>
    result = await run_workflow(code, question.prompt, executor, "code", timeout_s=240,
                                task=task, question=question)
    result.status, result.answer, result.trace

Every outcome is a `WorkflowResult` whose status is one of
    ok             the workflow returned an answer and extraction produced one
    invalid        no <graph> block, or validate_workflow found problems (listed in `error`)
    error          the workflow raised, made more than `max_calls` operator calls, ran out of
                   memory ("memory: ..."), or its process died (the signal is named)
    timeout        the time limit, the CPU limit or the loop-step budget ran out
    executor_error an executor call failed, even if the workflow caught the error
                   (the run says nothing about the workflow then: retry it, do not score it)
    empty          the workflow or the extraction produced no text
so a bad workflow never stops a batch: run_workflow does not raise because of anything a
workflow does. (It raises ValueError for an unknown family, and WorkerStartError when the
worker template cannot be started at all: both are the caller's or the machine's.)
Cancelling the caller's task still cancels the run.

Isolation. The code is validated here (validate.py), then runs in a worker process forked
for this run from a warm template (worker.py, isolation.py), under the language-level
rules of restricted.py plus an address-space limit (WORKER_MEMORY_MB), a CPU-time limit
and, when we run as root, uid nobody, no network and no files; it is killed at the
wall-clock limit. Its operator
calls come back here as plain requests and run with the real operators (host.py), so the
executor client (API keys, cache, concurrency limit), the sandbox for programs and the
task's tests stay in this process; calls in flight when the worker ends are cancelled.
The answer extraction runs here, on the returned text. Programs the operators obtain run
in the sandbox (scoreflow/sandbox), never in the worker or here.
"""

from __future__ import annotations

import re
import textwrap
import time
from dataclasses import dataclass

from scoreflow.executor import ExecutorClient
from scoreflow.tasks.base import Question, Task
from scoreflow.workflow.host import OperatorHost
from scoreflow.workflow.isolation import WorkerStartError, run_isolated
from scoreflow.workflow.context import WorkflowConfig
from scoreflow.workflow.operators import Extract, extraction_kind
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.restricted import (MAX_ANSWER_CHARS, MAX_PRINT_CHARS, Outcome, describe, guarded,
                                           run_restricted)
from scoreflow.workflow.run_context import MAX_OPERATOR_CALLS, RunContext, TraceEntry
from scoreflow.workflow.stubs import stub_operators
from scoreflow.workflow.validate import validate_workflow

__all__ = ["MAX_ANSWER_CHARS", "MAX_PRINT_CHARS", "STATUSES", "WorkerStartError", "WorkflowResult", "extract_graph",
           "run_workflow", "validate_workflow"]
STATUSES = ("ok", "invalid", "error", "timeout", "executor_error", "empty")

_GRAPH = re.compile(r"<graph>(.*?)(?:</?graph>|\Z)", re.DOTALL)
_FENCE_LINE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.MULTILINE)


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
    when sampling stops at it, or written as a second <graph>, a slip of small generators), without Markdown code-fence lines and common indentation;
    None if there is none."""
    found = _GRAPH.search(text)
    code = textwrap.dedent(_FENCE_LINE.sub("", found.group(1))).strip("\n") if found else ""
    return code if code.strip() else None


async def run_workflow(code: str | None, problem: str, executor: ExecutorClient, family: str, timeout_s: float,
                       task: Task | None = None, question: Question | None = None, *, temperature: float = 0.0,
                       max_calls: int = MAX_OPERATOR_CALLS, isolated: bool = True) -> WorkflowResult:
    """Validate and run `code` (None: the generator wrote no <graph> block) on `problem`,
    then extract the answer the task's scorer reads (operators.Extract). `timeout_s`
    bounds the workflow and, separately, the extraction; `temperature` is the executor's
    for generating operators (selection and extraction always use 0); code tasks need
    `task` and `question` for Test and extraction. `isolated=False` runs the code in this
    process, with the same operator path but no worker: it exists to measure what the
    isolation costs (bench/bench_isolation.py); never use it on generated code."""
    if family not in FAMILY_OPERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILY_OPERATORS)}")
    start = time.monotonic()
    ctx = RunContext(executor, problem, family, task=task, question=question, temperature=temperature,
                     max_calls=max_calls, deadline=start + timeout_s)
    config = WorkflowConfig(family, executor.model, ctx)
    try:
        outcome = await _outcome(code, problem, config, timeout_s, isolated)
        answer, outcome = await _extract(outcome, config, task, timeout_s) if outcome.status == "ok" else ("", outcome)
    except WorkerStartError:
        raise
    except Exception as e:  # noqa: BLE001 - our own failure on this workflow: still a status, with why
        answer, outcome = "", Outcome("error", f"the runtime failed on this workflow: {describe(e)}")
    return WorkflowResult(answer, outcome.status, tuple(ctx.trace), outcome.error, outcome.raw, outcome.printed,
                          time.monotonic() - start)


async def _outcome(code: str | None, problem: str, config: WorkflowConfig, timeout_s: float,
                   isolated: bool) -> Outcome:
    """The workflow's outcome before extraction; the parent's sticky reason (an executor
    error, the call budget) wins over whatever the worker reported."""
    if code is None:
        return Outcome("invalid", "no <graph> ... </graph> block with code")
    problems = validate_workflow(code, config.family)
    if problems:
        return Outcome("invalid", "; ".join(problems))
    host = OperatorHost(config)
    if isolated:
        outcome = await run_isolated(code, problem, host, timeout_s)
    else:
        operators = stub_operators(FAMILY_OPERATORS[config.family], host.handle)
        outcome = await run_restricted(code, problem, config._ctx, config, operators, timeout_s)
    if (reason := config._ctx.stopped()) is not None:
        return Outcome(*reason, outcome.raw, outcome.printed)
    return outcome


async def _extract(outcome: Outcome, config: WorkflowConfig, task: Task | None,
                   timeout_s: float) -> tuple[str, Outcome]:
    """(answer, outcome) after the extraction step on the returned text."""
    kind = extraction_kind(config.family, getattr(task, "name", None))
    status, error, extracted = await guarded(Extract(config)(raw=outcome.raw, kind=kind), config._ctx, timeout_s,
                                             extraction=True)
    if status != "ok":
        return "", Outcome(status, error, outcome.raw, outcome.printed)
    answer = extracted["answer"]
    if not answer.strip():
        return "", Outcome("empty", "extraction found no answer", outcome.raw, outcome.printed)
    return answer, outcome
