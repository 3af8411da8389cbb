"""The operators a workflow sees: stubs that hand every call to the run's gateway.

    operators = stub_operators(("Custom", "ScEnsemble"), gateway)   # fresh classes per run
    self.custom = operators.Custom(config)                          # in the workflow
    await self.custom(instruction="...")                            # -> gateway(request)

A request is plain JSON data; the parent's OperatorHost (host.py) checks it, runs the real
operator with the parent's executor, sandbox and task, and replies with one of

    {"ok": {...}}                      the operator's result dict
    {"raise": [type_name, message]}    an ordinary error the workflow may catch
    {"abort": [status, message]}       the run must end (a budget, the deadline, the executor)

Arguments are reduced to what the operators read: None stays None (it means "the run's
problem"), a list or tuple becomes a list or tuple of texts, anything else its text
(context.as_text). So nothing but strings crosses the boundary, and the stub, not the
workflow, decides what is sent. A request is measured as the bytes of its encoding (wire.py),
so a list of a million empty strings costs what it costs the side that decodes it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Awaitable, Callable, ClassVar

from scoreflow.workflow.context import RunLimits, WorkflowConfig, as_text
from scoreflow.workflow.wire import encode

Gateway = Callable[[dict], Awaitable[dict]]
MAX_REQUEST_BYTES = 1 << 20   # one call's request, encoded (ASCII-escaped JSON)
_RAISABLE = {e.__name__: e for e in (TypeError, ValueError, RuntimeError, KeyError, IndexError, LookupError,
                                     AttributeError, ZeroDivisionError, ArithmeticError, AssertionError)}


class OperatorStub:
    """Base of the per-run stub classes: `operator.X(config, problem=None)`, then
    `await op(...)`, exactly as the real operators are used."""

    name: ClassVar[str]
    _gateway: ClassVar[Gateway]

    def __init__(self, config: WorkflowConfig, problem: Any = None):
        if not isinstance(config, WorkflowConfig):
            raise TypeError(f"operator.{self.name}(config): pass the `config` that Workflow.__init__ received")
        self._limits: RunLimits = config._ctx
        self._problem = None if problem is None else as_text(problem)

    async def __call__(self, *args: Any, **kwargs: Any) -> dict:
        self._limits.check()
        request = {"op": self.name, "problem": self._problem, "args": [encode_argument(a) for a in args],
                   "kwargs": {k: encode_argument(v) for k, v in kwargs.items()}}
        size = len(encode(request))
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"{self.name}: its arguments take {size} bytes encoded; the limit is {MAX_REQUEST_BYTES}")
        return self._answer(await self._gateway(request))

    def _answer(self, reply: dict) -> dict:
        if "ok" in reply:
            return reply["ok"]
        if "abort" in reply:
            self._limits.abort(*reply["abort"])
        kind, message = reply["raise"]
        error = _RAISABLE.get(kind)
        raise error(message) if error else RuntimeError(f"{kind}: {message}")


def stub_operators(names: tuple[str, ...], gateway: Gateway) -> SimpleNamespace:
    """The workflow's `operator` namespace: one fresh stub class per name, so nothing a
    run does to these classes is seen by another run."""
    return SimpleNamespace(**{name: type(name, (OperatorStub,), {"name": name, "_gateway": staticmethod(gateway)})
                              for name in names})


def encode_argument(value: Any) -> str | None | dict[str, list[str]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [as_text(item) for item in value]}
    return as_text(value)


def decode_argument(value: Any) -> str | None | list[str] | tuple[str, ...]:
    """The inverse of encode_argument, for data from an untrusted worker: ValueError on
    anything encode_argument cannot have produced."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (kind, items), = value.items()
        if kind in ("list", "tuple") and isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items if kind == "list" else tuple(items)
    raise ValueError(f"not an encoded operator argument: {type(value).__name__}")
