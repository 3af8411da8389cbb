"""The restricted in-process core: run validated workflow code, produce plain data.

    outcome = await run_restricted(code, problem, limits, config, operators, timeout_s)
    outcome.status, outcome.error, outcome.raw, outcome.printed

The worker process (worker.py) calls this on every run; `operators` are then stubs that
send each call to the parent (stubs.py). The core never raises because of what the code
did: every failure, including turning the returned value into text, is an `Outcome`.

Language-level rules. The code runs in a fresh namespace whose builtins are a small
whitelist (containers, len/range/sorted/..., a few exception types, a captured and
bounded print); `range` is capped at MAX_RANGE items; the only other names are `operator`
(the family's operators) and `asyncio.gather`. The validator has already rejected imports,
double-underscore names, underscore attributes, frame/coroutine introspection, driving
coroutines by hand, str.format, dunder strings, `match`, `**`/`<<`, bare `except`, control
flow in `finally`, rebinding `self` and touching classes other than by calling them
(validate.py). Loops, function entries and comprehension elements tick `limits`, which
ends the run at the deadline or after its loop-step budget, even when the loop never
awaits. These rules are not a security boundary on their own: a single C-level operation
(a huge multiplication, hashing a deeply nested tuple) can block, exhaust memory or crash
the interpreter. That is why the core runs in a worker process (isolation.py).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import time
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Awaitable

from scoreflow.gather import gather
from scoreflow.workflow.context import RunAborted, RunLimits, WorkflowConfig, as_text, clip
from scoreflow.workflow.validate import TICK_NAME, instrument

MAX_ANSWER_CHARS = 50_000
MAX_PRINT_CHARS = 10_000
MAX_ERROR_CHARS = 1000
MAX_RANGE = 10_000
WORKFLOW_FILENAME = "<workflow>"

_SAFE_BUILTINS = (
    abs, all, any, bool, dict, enumerate, filter, float, isinstance, len, list, map, max, min, reversed, round,
    set, sorted, str, sum, tuple, zip,
    Exception, ArithmeticError, AssertionError, AttributeError, IndexError, KeyError, LookupError, NameError,
    RuntimeError, TypeError, ValueError, ZeroDivisionError,
)


@dataclass(frozen=True)
class Outcome:
    """What running the workflow produced, before the answer is extracted: status ("ok",
    "error", "timeout", "empty", "executor_error"), error message, the returned value as
    clipped text, and the bounded print output. Plain strings, so it crosses processes."""

    status: str
    error: str | None
    raw: str = ""
    printed: str = ""


async def run_restricted(code: str, problem: str, limits: RunLimits, config: WorkflowConfig,
                         operators: SimpleNamespace, timeout_s: float) -> Outcome:
    """Define the workflow in a fresh restricted namespace, build it on `problem`, run it,
    and turn the returned value into text (clipped to MAX_ANSWER_CHARS)."""
    printed = PrintBuffer(MAX_PRINT_CHARS)
    running = _execute(code, problem, limits, config, operators, printed)
    status, error, value = await guarded(running, limits, timeout_s)
    if status != "ok":
        return Outcome(status, error, "", printed.text())
    try:
        raw = clip(as_text(value), MAX_ANSWER_CHARS)
    except Exception as e:  # noqa: BLE001 - a self-referential dict, an int too long to print, ...
        return Outcome("error", f"the returned value could not be turned into text: {describe(e)}", "", printed.text())
    if not raw.strip():
        return Outcome("empty", "the workflow returned no answer", raw, printed.text())
    return Outcome("ok", None, raw, printed.text())


async def guarded(step: Awaitable[Any], limits: RunLimits, timeout_s: float,
                  extraction: bool = False) -> tuple[str, str | None, Any]:
    """(status, error, value) of one awaited step: every failure becomes a status. The
    sticky reason in `limits` wins, even when workflow code swallowed the abort."""
    try:
        value = await asyncio.wait_for(step, timeout_s)
    except (Exception, RunAborted) as e:  # not CancelledError: the caller's cancellation must pass
        value, failure = None, e
    else:
        failure = None
    if (reason := limits.stopped()) is not None:
        return reason[0], reason[1], None
    if isinstance(failure, asyncio.TimeoutError) or (not extraction and time.monotonic() > limits.deadline):
        return "timeout", f"did not finish within {timeout_s:g} s", None
    if failure is not None:
        return "error", describe(failure), None
    return "ok", None, value


async def _execute(code: str, problem: str, limits: RunLimits, config: WorkflowConfig, operators: SimpleNamespace,
                   printed: PrintBuffer) -> Any:
    program = compile(instrument(ast.parse(code)), WORKFLOW_FILENAME, "exec")
    namespace = _namespace(limits, operators, printed)
    exec(program, namespace)  # validated and instrumented code only (see the module docstring)
    workflow = namespace["Workflow"](config, problem)
    return await workflow.run_workflow()


def _namespace(limits: RunLimits, operators: SimpleNamespace, printed: PrintBuffer) -> dict[str, Any]:
    safe = {f.__name__: f for f in _SAFE_BUILTINS}
    safe.update(range=_bounded_range, print=printed.print, __build_class__=builtins.__build_class__)
    return {"__builtins__": safe, "__name__": "workflow", "operator": operators,
            "asyncio": SimpleNamespace(gather=gather), TICK_NAME: limits.tick}


def _bounded_range(*args: int) -> range:
    steps = range(*args)
    if len(steps) > MAX_RANGE:
        raise ValueError(f"range() of {len(steps)} items; workflows may use at most {MAX_RANGE}")
    return steps


class PrintBuffer:
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


def describe(error: BaseException) -> str:
    """Type, message and the workflow line that raised it. Guarded: the message of an error
    the workflow raised can itself fail to print (an int of 5000 digits, a cyclic list)."""
    try:
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == WORKFLOW_FILENAME]
        where = f" (workflow line {lines[-1]})" if lines else ""
        if isinstance(error, MemoryError):
            return f"memory: the workflow ran out of memory{where}"
        return clip(f"{type(error).__name__}: {error}{where}", MAX_ERROR_CHARS)
    except Exception:  # noqa: BLE001 - str(error) itself raised: show the type alone
        return f"{type(error).__name__} (its message could not be shown)"
