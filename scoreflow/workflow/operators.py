"""LLM-backed operators (SPEC A2), the per-run state they share, and the extraction step.

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
    MagicoreRefine(solutions, problem=None)               -> {"response": str}   (math; magicore/operator.py)

`input`/`problem` left out mean the run's problem (operators are bound to it, as in the
reference); `entry_point` left out means the code question's. Where text is expected, an
operator's result dict may be passed: `as_text` takes its main field. Programs the
operators obtain (Programmer's `solve()`, Test's candidate code) run only in the sandbox.

Each call goes through `RunContext.invoke`, which enforces the run's budgets and appends a
`TraceEntry`. Executor errors propagate as the client's typed `ExecutorError`s and are
recorded, never turned into "".
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, ClassVar

from scoreflow.executor import ExecutorClient, ExecutorError
from scoreflow.tasks.base import Question, Task
from scoreflow.tasks.gsm8k import extract_number
from scoreflow.tasks.math import last_boxed
from scoreflow.workflow import prompts
from scoreflow.workflow.context import MAX_LOOP_STEPS, RunLimits, WorkflowConfig, as_text, clip
from scoreflow.workflow.context import RunAborted  # noqa: F401 - operators' own errors, re-exported
from scoreflow.workflow.sandbox import SandboxResult, run_python_async

MAX_OPERATOR_CALLS = 50       # per run: a runaway loop of LLM calls ends with status "error"
MAX_TRIES = 3                 # Programmer attempts; Test repair rounds (ref)
PROGRAM_TIMEOUT_S = 30.0      # one sandboxed solve() run (ref)
PROGRAM_MEMORY_MB = 1024
FAILURE_CHARS = 1500          # tail of a failed program's output fed back to the executor
CONCISE_WORDS = 6             # a QA answer this short (one line) needs no extraction call
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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

    async def run_program(self, code: str, *, call: str | None = None, timeout_s: float = PROGRAM_TIMEOUT_S,
                          memory_mb: int = PROGRAM_MEMORY_MB) -> SandboxResult:
        self.sandbox_runs += 1
        return await run_python_async(code, call=call, timeout_s=timeout_s, memory_mb=memory_mb)


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
    """Runs the code question's public example tests (`task.program(question, code,
    task.public_tests(question))`) in the sandbox; on failure asks the executor to reflect
    and repair, at most MAX_TRIES rounds. Without public tests the run still checks that
    the code loads and defines the entry point."""

    async def _run(self, call: Call, solution: str, problem: str | None = None,
                   entry_point: str | None = None) -> dict:
        task, question = self._ctx.task, self._ctx.question
        if question is None or not hasattr(task, "public_tests"):
            raise ValueError("Test needs the run's code task and question (run_workflow(task=..., question=...))")
        entry = self._entry_point(entry_point)
        code, tests = code_block(as_text(solution), entry), task.public_tests(question)
        for repair in range(MAX_TRIES + 1):
            result = await call.run_program(task.program(question, code, tests), timeout_s=task.timeout_s,
                                            memory_mb=task.memory_mb)
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
    """The step after every workflow (SPEC A2; not offered to workflows): the final answer
    in the form the scorer reads. Rule-based when the text already has that form (a
    `\\boxed{}`, a bare number, a short one-line answer) and always for code (the code
    block defining the entry point, top-level statements other than definitions dropped);
    otherwise one executor call at temperature 0, whose reply is parsed the same way.
    Outside the run's operator-call budget."""

    _budgeted = False

    async def _run(self, call: Call, raw: str, kind: str) -> dict:
        if kind == "code":
            return {"answer": sanitize_code(code_block(raw, self._ctx.entry_point))}
        ready = _in_form(raw, kind)
        if ready is not None:
            return {"answer": ready}
        reply = await call.ask(_EXTRACT_PROMPTS[kind].format(problem=self._problem, solution=raw), temperature=0.0)
        return {"answer": _in_form(reply, kind) or reply.strip()}


_BARE_NUMBER = re.compile(r"[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*\.?")
_ANSWER_PREFIX = re.compile(r"^(?i:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?)\b\s*[:\-]?\s*")


def _in_form(text: str, kind: str) -> str | None:
    """The answer when `text` already states it in `kind`'s form, else None."""
    stripped = text.strip()
    if kind == "boxed":
        boxed = last_boxed(text)
        return f"\\boxed{{{boxed.strip()}}}" if boxed and boxed.strip() else None
    if kind == "number":
        if not (_BARE_NUMBER.fullmatch(stripped) or last_boxed(text) is not None):
            return None
        number = extract_number(text)
        return None if number is None else (str(int(number)) if number.is_integer() else repr(number))
    short = _ANSWER_PREFIX.sub("", stripped)
    return short if short and "\n" not in short and len(short.split()) <= CONCISE_WORDS else None


# --------------------------------------------------------------------------- text helpers

def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def tagged(text: str, tag: str) -> str | None:
    """Content of the last <tag>...</tag> (an unclosed last tag runs to the end), stripped."""
    found = re.findall(rf"<{tag}>(.*?)(?:</{tag}>|\Z)", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


_CHOICE = re.compile(r"(?i:choice|answer|solution|candidate|option|pick|select(?:ed)?|best)\W{0,5}"
                     r"(?:(?i:is)\W{1,5})?\(?([A-Z])\)?(?![A-Za-z])")
_LONE_LETTER = re.compile(r"\W*([A-Z])\W*")


def chosen_letter(reply: str, count: int) -> int | None:
    """Index of the candidate a reply picks: the last explicit "Choice: X" ("answer is
    (X)", "candidate X", ...) naming one of `count` candidates, else a reply that is just
    a letter; None when it names none."""
    letters = [m.group(1) for m in _CHOICE.finditer(reply)]
    if not letters and (lone := _LONE_LETTER.fullmatch(reply)):
        letters = [lone.group(1)]
    return next((LETTERS.index(x) for x in reversed(letters) if LETTERS.index(x) < count), None)


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign)


def code_block(text: str, entry_point: str | None = None) -> str:
    """The code in a reply: the last Python code block that defines `entry_point`, else
    the last Python code block, else the whole text (already bare code)."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if entry_point:
        defining = re.compile(rf"\bdef\s+{re.escape(entry_point)}\s*\(")
        blocks = [b for b in blocks if defining.search(b)] or blocks
    return (blocks[-1] if blocks else text).strip()


def sanitize_code(code: str) -> str:
    """Keep only imports, definitions and assignments at the top level (drops example
    calls, prints, asserts and `if __name__ == "__main__":` blocks); unparsable code is
    returned unchanged (it fails the tests on its own)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    kept = [node for node in tree.body if isinstance(node, _DEFINITIONS)]
    return code if len(kept) == len(tree.body) else ast.unparse(ast.Module(kept, type_ignores=[]))


def failure_text(result: SandboxResult) -> str:
    """What to tell the executor about a failed program run: the tail of its output."""
    detail = (result.stderr.strip() or result.stdout.strip())[-FAILURE_CHARS:]
    if result.status == "timeout":
        return "the program did not finish in time" + (f"; its output:\n{detail}" if detail else "")
    return detail or f"the program failed ({result.status}, exit status {result.returncode})"


# MAgICoRE's refinement as a math operator (SPEC B inside SPEC A). It subclasses Operator, so it
# is imported once everything above exists; scoreflow.magicore imports this module first.
from scoreflow.magicore.operator import MagicoreRefine  # noqa: E402,I001

OPERATORS[MagicoreRefine.name] = MagicoreRefine
