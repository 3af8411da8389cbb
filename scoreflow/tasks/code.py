"""HumanEval and MBPP: a code answer scores 1.0 iff the hidden tests pass in the sandbox.

The answer is complete code (the function and anything it needs). It runs in an isolated
process (scoreflow/sandbox) as the program preamble + answer, and then, in the program's
namespace, the checks `candidate = <entry_point>` + hidden tests, which the program never
sees in a file. A pass is proven, not assumed: it counts only if the checks ran to their
end (the sandbox's nonce came back); exiting, cleanly or not, at import or inside the
function, always fails.

- HumanEval: preamble = the task prompt, so helpers the tests call (`poly`,
  `encode_cyclic`, ...) and the prompt's imports exist; the answer's definition replaces
  the prompt's stub. Tests = `test` (defines `check`) + `check(<entry_point>)`.
- MBPP: preamble = `test_imports`; tests = the `test_list` asserts.

Public example tests (for the Test operator, never for scoring) come from
`<name>_public_test.jsonl`: HumanEval rows are keyed by `problem_id` (our `HumanEval_84`
is their `HumanEval/84`); MBPP rows only carry `entry_point`, which is not unique, so a
row's public tests are those for its entry point that are also among its own hidden
asserts. Most asserts call `candidate`, some the function by name, and some need the
preamble (`import math`): run them with `CodeTask.run(question, solution, tests)`.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from scoreflow.sandbox import SandboxResult, run_python_async

from .base import Question, Task
from .data import aflow_rows, check_split, read_jsonl

SPLITS = ("validate", "test")
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 1024


@dataclass(frozen=True)
class CodeTask(Task):
    """A code benchmark split; change limits with `dataclasses.replace(task, timeout_s=...)`."""

    preamble: Callable[[dict[str, Any]], str]  # row -> code run before the answer
    public: dict[str, tuple[str, ...]]  # question id -> public asserts on `candidate`
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB

    def program(self, question: Question, answer: str) -> str:
        """The module the answer runs in (preamble + answer): all the program can read."""
        return "\n\n".join([self.preamble(question.row), answer]) + "\n"

    def checks(self, question: Question, tests: Sequence[str] | None = None) -> str:
        """What runs after the program, in its namespace: `candidate = <entry point>` and
        `tests` (None: the hidden tests; an empty list: none, so only that the answer loads
        and defines the entry point)."""
        tests = [question.gold] if tests is None else list(tests)
        return "\n\n".join([f"candidate = {question.row['entry_point']}", *tests]) + "\n"

    async def run(self, question: Question, answer: str, tests: Sequence[str] | None = None) -> SandboxResult:
        """Run `answer` against `tests` (None: the hidden tests) in the sandbox, under this
        task's limits; "ok" only if every check ran."""
        return await run_python_async(self.program(question, answer), checks=self.checks(question, tests),
                                      timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def score(self, question: Question, answer: str) -> float:
        return asyncio.run(self.ascore(question, answer))

    async def ascore(self, question: Question, answer: str) -> float:
        """Like `score`, without blocking the event loop while the tests run."""
        if not answer.strip():
            return 0.0
        return float((await self.run(question, answer)).ok)

    def public_tests(self, question: Question) -> list[str]:
        """Public example asserts (calling `candidate`) for the Test operator; may be empty."""
        return list(self.public.get(question.id, ()))


def _humaneval_prompt(row: dict[str, Any]) -> str:
    return row["prompt"]


def _mbpp_imports(row: dict[str, Any]) -> str:
    return "\n".join(row["test_imports"])


def _squash(code: str) -> str:
    return re.sub(r"\s+", "", code)


def _humaneval_public(data_dir: Path, rows: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    public_rows = read_jsonl(data_dir / "aflow" / "humaneval_public_test.jsonl", ("problem_id", "test"))
    by_problem = {r["problem_id"]: tuple(t for t in r["test"] if t.strip()) for r in public_rows}
    return {r["task_id"]: by_problem.get(r["task_id"].replace("_", "/"), ()) for r in rows}


def _mbpp_public(data_dir: Path, rows: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    by_entry: dict[str, list[str]] = defaultdict(list)
    for r in read_jsonl(data_dir / "aflow" / "mbpp_public_test.jsonl", ("entry_point", "test")):
        by_entry[r["entry_point"]].extend(r["test"])
    public = {}
    for r in rows:
        hidden = {_squash(t) for t in r["test_list"]}
        own = [
            t
            for t in by_entry[r["entry_point"]]
            if _squash(t.replace("candidate", r["entry_point"])) in hidden
        ]
        public[str(r["task_id"])] = tuple(dict.fromkeys(own))
    return public


def load_humaneval(split: str, data_dir: Path) -> CodeTask:
    """`aflow/humaneval_<split>.jsonl`; the prompt is the signature + docstring."""
    check_split("humaneval", split, SPLITS)
    rows = aflow_rows(data_dir, "humaneval", split, ("task_id", "prompt", "test", "entry_point"))
    questions = [
        Question(r["task_id"], r["prompt"], f"{r['test']}\n\ncheck({r['entry_point']})", r)
        for r in rows
    ]
    public = _humaneval_public(data_dir, rows)
    return CodeTask("humaneval", "code", questions, _humaneval_prompt, public)


def load_mbpp(split: str, data_dir: Path) -> CodeTask:
    """`aflow/mbpp_<split>.jsonl`; the prompt is the description + signature line."""
    check_split("mbpp", split, SPLITS)
    rows = aflow_rows(data_dir, "mbpp", split, ("task_id", "prompt", "test_list", "test_imports", "entry_point"))
    questions = [
        Question(str(r["task_id"]), r["prompt"], "\n".join(r["test_list"]), r) for r in rows
    ]
    return CodeTask("mbpp", "code", questions, _mbpp_imports, _mbpp_public(data_dir, rows))
