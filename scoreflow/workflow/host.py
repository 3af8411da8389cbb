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

The operators are a registry: the paper's (operators.py) and plugins, classes defined
outside this package that register themselves when their module is imported:

    @register_operator                       # in the plugin's module
    class MagicoreRefine(Operator): ...      # offered under its class name

The runtime names a plugin's module only as text (PLUGIN_MODULES) and imports it when a host
is built for a family that offers the operator (prompts.FAMILY_OPERATORS), so this package
imports no application. Whether a run offers it is decided before: `--operators +Name`,
checked on the generated code (optimize/stages.py).
"""

from __future__ import annotations

import importlib
from typing import Any

from scoreflow.workflow import operators
from scoreflow.workflow.context import RunAborted, WorkflowConfig, clip
from scoreflow.workflow.operators import Operator
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.run_context import RunContext
from scoreflow.workflow.stubs import decode_argument
from scoreflow.workflow.wire import ProtocolError

MAX_MESSAGE_CHARS = 2000
# Every operator registered so far, by name: the paper's (PAPERS.md §S2), then the plugins imported.
OPERATORS: dict[str, type[Operator]] = dict(operators.OPERATORS)
# The module that defines and registers each operator a run may add (prompts.EXTRA_OPERATORS).
PLUGIN_MODULES: dict[str, str] = {"MagicoreRefine": "scoreflow.magicore.workflow_operator"}


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator: offer `cls` to workflows under its name (`Operator.name`, the class name)."""
    if OPERATORS.setdefault(cls.name, cls) is not cls:
        raise ValueError(f"an operator named {cls.name!r} is already registered: {OPERATORS[cls.name]!r}")
    return cls


def operator_class(name: str) -> type[Operator]:
    """The operator registered as `name`, importing its plugin module (PLUGIN_MODULES) first if needed."""
    if name not in OPERATORS and name in PLUGIN_MODULES:
        importlib.import_module(PLUGIN_MODULES[name])
    if name not in OPERATORS:
        raise LookupError(f"no operator {name!r} is registered (plugin module: {PLUGIN_MODULES.get(name)})")
    return OPERATORS[name]


class OperatorHost:
    def __init__(self, config: WorkflowConfig):
        if not isinstance(config._ctx, RunContext):
            raise TypeError("OperatorHost needs a config bound to a RunContext")
        self.config, self.ctx = config, config._ctx
        self.operators = {name: operator_class(name) for name in FAMILY_OPERATORS[config.family]}

    async def handle(self, request: Any) -> dict:
        """The reply to one operator call (a stubs.Gateway); raises only ProtocolError and
        cancellation."""
        return await self.call(*self.parse(request))

    async def call(self, name: str, problem: str | None, args: list, kwargs: dict) -> dict:
        """Run a parsed request with a fresh instance of the real operator."""
        try:
            result = await self.operators[name](self.config, problem)(*args, **kwargs)
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
            if name not in self.operators or not (problem is None or isinstance(problem, str)):
                raise ValueError(f"operator {name!r} with problem of type {type(problem).__name__}")
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("args must be a list and kwargs an object")
            return name, problem, [decode_argument(a) for a in args], {k: decode_argument(v) for k, v in kwargs.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"a malformed operator request ({clip(str(e), 200)})") from None
