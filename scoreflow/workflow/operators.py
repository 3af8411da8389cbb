"""LLM-backed operators (PAPERS.md §S2) and the extraction step after every workflow.

A workflow builds its operators from the `config` it is given and calls them:

    self.custom = operator.Custom(config)                                  # in __init__
    draft = await self.custom(instruction="Solve step by step.")           # in run_workflow
    draft["response"]

Every call returns a dict of plain values (one shape per operator):

    Custom(instruction, input=None)                       -> {"response": str}
    AnswerGenerate(input=None)                            -> {"thought": str, "answer": str}
    Programmer(analysis="None", problem=None)             -> {"code": str, "output": str}
    ScEnsemble(solutions, problem=None)                   -> {"response": str}
    Review(pre_solution, problem=None)                    -> {"review": str, "solution": str}
    CustomCodeGenerate(instruction, problem=None, entry_point=None) -> {"response": str}
    Test(solution, problem=None, entry_point=None)        -> {"result": bool, "solution": str}
    MagicoreRefine(solutions, problem=None)               -> {"response": str}   (math; a plugin: host.PLUGIN_MODULES)

`input`/`problem` left out mean the run's problem (operators are bound to it, as in the
reference); `entry_point` left out means the code question's. Where text is expected, an
operator's result dict may be passed: `as_text` takes its main field. Programs the
operators obtain (Programmer's `solve()`, Test's candidate code) run only in the sandbox.

Each call goes through `RunContext.invoke` (run_context.py), which enforces the run's budgets and appends a
`TraceEntry`. Executor errors propagate as the client's typed `ExecutorError`s and are
recorded, never turned into "".
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from scoreflow.workflow import prompts
from scoreflow.workflow.context import WorkflowConfig, as_text
from scoreflow.workflow.replies import (LETTERS, answer_in_form, chosen_letter, code_block, failure_text, sanitize_code,
                                        tagged)
from scoreflow.workflow.run_context import Call

MAX_TRIES = 3                 # Programmer attempts; Test repair rounds (ref)


class Operator:
    """Base class: bound to a run by its config; `await op(...)` checks the arguments
    against `_run`'s signature, then runs `_run` through `RunContext.invoke`."""

    name: ClassVar[str]
    _parameters: ClassVar[inspect.Signature]
    _budgeted: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__
        cls._parameters = inspect.Signature(list(inspect.signature(cls._run).parameters.values())[2:])  # - self, call

    def __init__(self, config: WorkflowConfig, problem: str | None = None):
        if not isinstance(config, WorkflowConfig):
            raise TypeError(f"operator.{self.name}(config): pass the `config` that Workflow.__init__ received")
        self._ctx = config._ctx
        self._problem = self._ctx.problem if problem is None else as_text(problem)

    async def __call__(self, *args: Any, **kwargs: Any) -> dict:
        try:
            bound = self._parameters.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}({parameter_list(type(self))}): {e}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        return await self._ctx.invoke(self.name, arguments, lambda call: self._run(call, **arguments),
                                      budgeted=self._budgeted)

    async def _run(self, call: Call, **arguments: Any) -> dict:
        raise NotImplementedError

    def _or_problem(self, value: Any) -> str:
        return self._problem if value is None else as_text(value)

    def _entry_point(self, value: Any) -> str:
        entry = as_text(value) or self._ctx.entry_point
        if not entry:
            raise ValueError(f"{self.name} needs entry_point (the function's name): this run has no code question")
        return entry


def parameter_list(operator: type[Operator]) -> str:
    """How the guide writes an operator's parameters: "instruction, input=None"."""
    return ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                     for p in operator._parameters.parameters.values())


class Custom(Operator):
    async def _run(self, call: Call, instruction: str, input: str | None = None) -> dict:
        prompt = prompts.CUSTOM.format(instruction=as_text(instruction), input=self._or_problem(input)).strip()
        return {"response": await call.ask(prompt)}


class AnswerGenerate(Operator):
    async def _run(self, call: Call, input: str | None = None) -> dict:
        reply = await call.ask(prompts.ANSWER_GENERATE.format(input=self._or_problem(input)))
        answer = tagged(reply, "answer") or reply.strip().splitlines()[-1]
        return {"thought": tagged(reply, "thought") or reply.strip(), "answer": answer}


class Programmer(Operator):
    """Asks for a `solve()` program, runs it in the sandbox, and on failure feeds the
    error back in the same conversation (MAX_TRIES attempts in all)."""

    async def _run(self, call: Call, analysis: str = "None", problem: str | None = None) -> dict:
        content = prompts.PROGRAMMER.format(problem=self._or_problem(problem), analysis=as_text(analysis))
        messages = [{"role": "user", "content": content}]
        for _ in range(MAX_TRIES):
            reply = await call.chat(messages)
            code = code_block(reply, "solve")
            result = await call.run_program(code, call="solve()")
            if result.ok:
                return {"code": code, "output": result.value}
            failure = failure_text(result)
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": prompts.PROGRAMMER_RETRY.format(error=failure)}]
        return {"code": code, "output": f"Error: {failure}"}


class ScEnsemble(Operator):
    """Self-consistency: the executor names (by letter) the candidate whose answer most
    candidates share. Identical candidates need no call; an unreadable choice falls back
    to the most frequent candidate text."""

    async def _run(self, call: Call, solutions: list[str], problem: str | None = None) -> dict:
        texts = [as_text(s) for s in solutions] if isinstance(solutions, (list, tuple)) else [as_text(solutions)]
        if not texts or len(texts) > len(LETTERS):
            raise ValueError(f"ScEnsemble takes 1 to {len(LETTERS)} solutions, got {len(texts)}")
        if len(set(texts)) == 1:
            return {"response": texts[0]}
        listing = "\n\n".join(f"{letter}:\n{text}" for letter, text in zip(LETTERS, texts))
        reply = await call.ask(prompts.SC_ENSEMBLE.format(problem=self._or_problem(problem), solutions=listing),
                               temperature=0.0)
        index = chosen_letter(reply, len(texts))
        return {"response": texts[index] if index is not None else max(texts, key=texts.count)}


class Review(Operator):
    """Critique plus revised solution; without a <solution> section the input is kept."""

    async def _run(self, call: Call, pre_solution: str, problem: str | None = None) -> dict:
        before = as_text(pre_solution)
        reply = await call.ask(prompts.REVIEW.format(problem=self._or_problem(problem), solution=before))
        return {"review": tagged(reply, "review") or reply.strip(), "solution": tagged(reply, "solution") or before}


class CustomCodeGenerate(Operator):
    async def _run(self, call: Call, instruction: str, problem: str | None = None,
                   entry_point: str | None = None) -> dict:
        entry = self._entry_point(entry_point)
        reply = await call.ask(prompts.CUSTOM_CODE_GENERATE.format(
            instruction=as_text(instruction), problem=self._or_problem(problem), entry_point=entry))
        return {"response": code_block(reply, entry)}


class Test(Operator):
    """Runs the code question's public example tests (`task.public_tests(question)`, as the
    checks after `task.program(question, code)`) in the sandbox: they pass only if they ran
    to their end, never by an early exit. On failure asks the executor to reflect and
    repair, at most MAX_TRIES rounds. Without public tests the run still checks that the
    code loads and defines the entry point."""

    async def _run(self, call: Call, solution: str, problem: str | None = None,
                   entry_point: str | None = None) -> dict:
        task, question = self._ctx.task, self._ctx.question
        if question is None or not hasattr(task, "public_tests"):
            raise ValueError("Test needs the run's code task and question (run_workflow(task=..., question=...))")
        entry = self._entry_point(entry_point)
        code, tests = code_block(as_text(solution), entry), task.public_tests(question)
        for repair in range(MAX_TRIES + 1):
            result = await call.run_program(task.program(question, code), checks=task.checks(question, tests),
                                            timeout_s=task.timeout_s, memory_mb=task.memory_mb)
            if result.ok:
                return {"result": True, "solution": code}
            if repair == MAX_TRIES:
                break
            reply = await call.ask(prompts.TEST_REFLECT.format(
                entry_point=entry, problem=self._or_problem(problem), solution=code, failure=failure_text(result)))
            code = code_block(reply, entry)
        return {"result": False, "solution": code}


OPERATORS: dict[str, type[Operator]] = {op.name: op for op in (
    Custom, AnswerGenerate, Programmer, ScEnsemble, Review, CustomCodeGenerate, Test)}

# --------------------------------------------------------------------------- extraction

EXTRACTION_KINDS = {"gsm8k": "number", "math": "boxed", "drop": "concise", "hotpotqa": "concise",
                    "humaneval": "code", "mbpp": "code"}
FAMILY_EXTRACTION = {"math": "boxed", "qa": "concise", "code": "code"}
_EXTRACT_PROMPTS = {"boxed": prompts.EXTRACT_BOXED, "number": prompts.EXTRACT_NUMBER,
                    "concise": prompts.EXTRACT_CONCISE}


def extraction_kind(family: str, task_name: str | None = None) -> str:
    """"boxed" (MATH), "number" (GSM8K), "concise" (QA) or "code"; by task, else family."""
    return EXTRACTION_KINDS.get(task_name or "") or FAMILY_EXTRACTION[family]


class Extract(Operator):
    """The step after every workflow (PAPERS.md §S2; not offered to workflows): the final answer
    in the form the scorer reads. Rule-based when the text already has that form (a
    `\\boxed{}`, a bare number, a short one-line answer) and always for code (the code
    block defining the entry point, top-level statements other than definitions dropped);
    otherwise one executor call at temperature 0, whose reply is parsed the same way.
    Outside the run's operator-call budget."""

    _budgeted = False

    async def _run(self, call: Call, raw: str, kind: str) -> dict:
        if kind == "code":
            return {"answer": sanitize_code(code_block(raw, self._ctx.entry_point))}
        ready = answer_in_form(raw, kind)
        if ready is not None:
            return {"answer": ready}
        reply = await call.ask(_EXTRACT_PROMPTS[kind].format(problem=self._problem, solution=raw), temperature=0.0)
        return {"answer": answer_in_form(reply, kind) or reply.strip()}
