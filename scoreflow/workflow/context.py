"""Per-run state that both sides of the worker boundary need, and text helpers.

The workflow worker (worker.py) imports only this module's kind of code: nothing here
pulls in the executor client, the tasks or torch, so the worker template stays small and
forks fast. The parent's RunContext (run_context.py) extends `RunLimits` with the executor,
the trace and the operator-call budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

MAX_LOOP_STEPS = 100_000      # per run: loop iterations + function entries (bounds CPU)
TRACE_CHARS = 2000            # default clip length (per traced input/output)
MAIN_FIELDS = ("response", "solution", "answer", "output", "code")


class RunAborted(BaseException):
    """Ends a workflow run from the inside: a limit was reached or the executor failed.
    A BaseException, so a generated `except Exception:` cannot swallow it."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class RunLimits:
    """The time limit and loop-step budget of one run, checked by every tick of the
    instrumented workflow (validate.instrument) and before every operator call.

    Sticky: after `abort`, every later tick and check raises again, so workflow code cannot
    carry on past a limit it caught. `deadline` is a time.monotonic() value (the clock is
    system-wide, so the parent can hand its deadline to a worker process as is).
    """

    def __init__(self, *, max_steps: int = MAX_LOOP_STEPS, deadline: float = math.inf):
        self.max_steps, self.deadline = max_steps, deadline
        self.steps = 0
        self.aborted: RunAborted | None = None

    def abort(self, status: str, message: str) -> NoReturn:
        """Record the first reason to stop (later ones keep it) and raise it."""
        if self.aborted is None:
            self.aborted = RunAborted(status, message)
        raise RunAborted(self.aborted.status, str(self.aborted))

    def stopped(self) -> tuple[str, str] | None:
        """(status, message) of the sticky reason this run must end, if any."""
        return None if self.aborted is None else (self.aborted.status, str(self.aborted))

    def check(self) -> None:
        if (reason := self.stopped()) is not None:
            self.abort(*reason)
        if time.monotonic() > self.deadline:
            self.abort("timeout", "the time limit was reached")

    def tick(self) -> bool:
        """Called by instrumented workflow code at every loop step (validate.instrument)."""
        self.steps += 1
        if self.steps > self.max_steps:
            self.abort("timeout", f"more than {self.max_steps} loop steps")
        self.check()
        return True


@dataclass(frozen=True)
class WorkflowConfig:
    """The `config` given to `Workflow.__init__` and passed on to each operator: the run's
    family and executor model, readable by the workflow, and its limits (a RunContext in
    the parent), which are not (workflow code may not touch attributes starting with "_")."""

    family: str
    model: str
    _ctx: RunLimits = field(repr=False, compare=False)


def as_text(value: Any) -> str:
    """Text of an operator input or a workflow's return value: strings as they are; a
    result dict's main field (response, solution, answer, output, code, in that order);
    a tuple's first item (AFlow workflows return (answer, cost)); list items joined by blank
    lines; None as ""; anything else via str()."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        key = next((k for k in MAIN_FIELDS if k in value), None)
        return str(value) if key is None else as_text(value[key])
    if isinstance(value, tuple):
        return as_text(value[0]) if value else ""
    if isinstance(value, list):
        return "\n\n".join(as_text(v) for v in value)
    return str(value)


def clip(text: str, limit: int = TRACE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"
