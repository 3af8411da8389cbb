"""The parent's side of operator calls: what a workflow's stubs ask for, done by the real
operators, so the executor client (API keys, cache, concurrency limit), the sandbox and
the task's tests stay in the parent process.

    host = OperatorHost(WorkflowConfig(family, executor.model, ctx))   # ctx: the run's RunContext
    reply = await host.handle(request)                                # see stubs.py for the shapes
    reply = await host.call(*host.parse(request))                     # the same, in two steps

Requests come from a worker process that runs generated code, so they are checked as
untrusted input: anything the stubs cannot have sent is a ProtocolError (the caller ends
the worker). Each call gets a fresh operator instance bound to the run's context, which
enforces the call budget and the deadline and records the trace.
"""

from __future__ import annotations

from typing import Any

from scoreflow.workflow import operators
from scoreflow.workflow.context import RunAborted, WorkflowConfig, clip
from scoreflow.workflow.magicore_refine import MagicoreRefine
from scoreflow.workflow.operators import Operator
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.run_context import RunContext
from scoreflow.workflow.stubs import decode_argument
from scoreflow.workflow.wire import ProtocolError

MAX_MESSAGE_CHARS = 2000
# Every operator a workflow may call, by name: the paper's (PAPERS.md §S2) and ours, MagicoreRefine,
# which a run offers only with --operators +MagicoreRefine (prompts.FAMILY_OPERATORS, validate.py).
OPERATORS: dict[str, type[Operator]] = {**operators.OPERATORS, MagicoreRefine.name: MagicoreRefine}


class OperatorHost:
    def __init__(self, config: WorkflowConfig):
        if not isinstance(config._ctx, RunContext):
            raise TypeError("OperatorHost needs a config bound to a RunContext")
        self.config, self.ctx = config, config._ctx
        self.allowed = FAMILY_OPERATORS[config.family]

    async def handle(self, request: Any) -> dict:
        """The reply to one operator call (a stubs.Gateway); raises only ProtocolError and
        cancellation."""
        return await self.call(*self.parse(request))

    async def call(self, name: str, problem: str | None, args: list, kwargs: dict) -> dict:
        """Run a parsed request with a fresh instance of the real operator."""
        try:
            result = await OPERATORS[name](self.config, problem)(*args, **kwargs)
        except RunAborted as e:
            return {"abort": [e.status, str(e)]}
        except Exception as e:  # noqa: BLE001 - reported to the workflow, which may catch it
            if (reason := self.ctx.stopped()) is not None:  # the executor failed: the run ends
                return {"abort": list(reason)}
            return {"raise": [type(e).__name__, clip(str(e), MAX_MESSAGE_CHARS)]}
        return {"ok": result}

    def parse(self, request: Any) -> tuple[str, str | None, list, dict]:
        try:
            name, problem, args, kwargs = (request[k] for k in ("op", "problem", "args", "kwargs"))
            if name not in self.allowed or not (problem is None or isinstance(problem, str)):
                raise ValueError(f"operator {name!r} with problem of type {type(problem).__name__}")
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("args must be a list and kwargs an object")
            return name, problem, [decode_argument(a) for a in args], {k: decode_argument(v) for k, v in kwargs.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"a malformed operator request ({clip(str(e), 200)})") from None
