"""One workflow run's state in the parent process: the executor and problem the operators
are bound to, the trace they append to, the budgets, and each operator call's access to the
executor and the sandbox.

    ctx = RunContext(executor, problem, family, task=task, question=question, deadline=...)
    output = await ctx.invoke(name, inputs, lambda call: ...)   # budgets checked, TraceEntry appended
    text = await call.ask(prompt)                                # inside: one executor request, counted
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scoreflow.executor import ExecutorClient, ExecutorError
from scoreflow.tasks.base import Question, Task
from scoreflow.workflow.context import MAX_LOOP_STEPS, RunLimits, clip
from scoreflow.sandbox import SandboxResult, run_python_async

MAX_OPERATOR_CALLS = 50       # per run: a runaway loop of LLM calls ends with status "error"
PROGRAM_TIMEOUT_S = 30.0      # one sandboxed solve() run (ref)
PROGRAM_MEMORY_MB = 1024


@dataclass(frozen=True)
class TraceEntry:
    """One operator call: inputs and output as clipped text, what it used, how it ended."""

    operator: str
    inputs: dict[str, str]
    output: str | None
    error: str | None
    latency_s: float
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sandbox_runs: int = 0


class RunContext(RunLimits):
    """What one workflow run shares in the parent process: the executor and problem (and,
    for code, the task and question) the operators are bound to, the trace they append to,
    and the run's limits.

    Sticky (see RunLimits): after `abort`, or after any executor call failed, every later
    check and budgeted operator call raises again, so workflow code cannot carry on past a
    failure it caught.
    """

    def __init__(self, executor: ExecutorClient, problem: str, family: str, *, task: Task | None = None,
                 question: Question | None = None, temperature: float = 0.0, max_calls: int = MAX_OPERATOR_CALLS,
                 max_steps: int = MAX_LOOP_STEPS, deadline: float = math.inf):
        super().__init__(max_steps=max_steps, deadline=deadline)
        self.executor, self.problem, self.family = executor, problem, family
        self.task, self.question, self.temperature = task, question, temperature
        self.max_calls = max_calls
        self.trace: list[TraceEntry] = []
        self.calls = 0
        self.executor_error: ExecutorError | None = None

    @property
    def entry_point(self) -> str | None:
        return self.question.row.get("entry_point") if self.question is not None else None

    def stopped(self) -> tuple[str, str] | None:
        if self.aborted is None and self.executor_error is not None:
            return "executor_error", f"{type(self.executor_error).__name__}: {self.executor_error}"
        return super().stopped()

    async def invoke(self, name: str, inputs: dict[str, Any], run: Callable[[Call], Awaitable[dict]], *,
                     budgeted: bool = True) -> dict:
        """Run one operator call under the budgets and append its TraceEntry."""
        if budgeted:
            self.check()
            self.calls += 1
            if self.calls > self.max_calls:
                self.abort("error", f"more than {self.max_calls} operator calls")
        call, start = Call(self), time.monotonic()
        output, error = None, None
        try:
            output = await run(call)
            return output
        except BaseException as e:  # executor and workflow errors, cancellation, aborts: traced, passed on
            if isinstance(e, ExecutorError) and self.executor_error is None:
                self.executor_error = e
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            self.trace.append(TraceEntry(
                name, {k: clip(_shown(v)) for k, v in inputs.items()}, None if output is None else clip(_shown(output)),
                error, time.monotonic() - start, call.llm_calls, call.prompt_tokens, call.completion_tokens,
                call.sandbox_runs))


class Call:
    """One operator call's access to the executor and the sandbox; counts what it used."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.llm_calls = self.prompt_tokens = self.completion_tokens = self.sandbox_runs = 0

    async def chat(self, messages: list[dict[str, str]], *, temperature: float | None = None) -> str:
        """The executor's reply text; generation uses the run's temperature unless given."""
        result = await self.ctx.executor.chat(messages, temperature=self.ctx.temperature if temperature is None
                                              else temperature)
        self.llm_calls += 1
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        return result.text

    async def ask(self, prompt: str, *, temperature: float | None = None) -> str:
        return await self.chat([{"role": "user", "content": prompt}], temperature=temperature)

    async def run_program(self, code: str, *, call: str | None = None, checks: str | None = None,
                          timeout_s: float = PROGRAM_TIMEOUT_S, memory_mb: int = PROGRAM_MEMORY_MB) -> SandboxResult:
        """One sandbox run (`run_python_async`: `call` for a value, `checks` for tests that must run to their end)."""
        self.sandbox_runs += 1
        return await run_python_async(code, call=call, checks=checks, timeout_s=timeout_s, memory_mb=memory_mb)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
