"""PAPERS.md §S3's runnability check, made free: before a workflow is executed for real, it runs
once on its task's first question against a stand-in executor that answers every operator
with one canned, well-formed reply, so the check costs no LLM call.

    error = await dry_run(code, task)     # None: it ran and returned an answer

A workflow that raises, times out or returns nothing there (`self.problem["goal"]` on a
string, a misspelt key of an operator's result, a coroutine added without `await`) would
only become a pair loser; the generate stage resamples it like any other invalid workflow.
It runs through the same isolated runtime as the real runs (run_workflow). What the canned
reply cannot show: whether the workflow is any good, and failures that depend on what the
executor says (e.g. indexing a list parsed from its reply).
"""

from __future__ import annotations

from scoreflow.executor import ChatResult
from scoreflow.tasks.base import Task
from scoreflow.workflow.runtime import run_workflow

DRY_RUN_TIMEOUT_S = 30.0  # canned replies answer at once; only the workflow's own work takes time

# One reply every operator can read: a thought and a short answer (AnswerGenerate), a review
# and a solution (Review), a choice (ScEnsemble), a boxed answer (extraction), and code
# defining solve() (Programmer) and the code question's entry point (CustomCodeGenerate, Test).
CANNED_REPLY = """\
<thought>Work through the problem step by step.</thought>
<answer>42</answer>
<review>The steps are correct.</review>
<solution>The answer is \\boxed{{42}}.</solution>
Choice: A
```python
def solve():
    return 42


def {entry_point}(*args, **kwargs):
    return None
```"""


class CannedExecutor:
    """The stand-in executor: `chat` returns CANNED_REPLY for every request, at no cost."""

    model = "dry-run"

    def __init__(self, entry_point: str | None):
        self.reply = CANNED_REPLY.format(entry_point=entry_point or "solve")

    async def chat(self, messages: list[dict[str, str]], **options) -> ChatResult:
        return ChatResult((self.reply,), ("stop",), prompt_tokens=0, completion_tokens=0)


async def dry_run(code: str, task: Task) -> str | None:
    """None when `code` runs to an answer on the task's first question; else why not."""
    question = task.questions[0]
    executor = CannedExecutor(question.row.get("entry_point"))
    result = await run_workflow(code, question.prompt, executor, task.family, DRY_RUN_TIMEOUT_S, task=task,
                                question=question)
    if result.status == "ok":
        return None
    return f"fails its dry run on a canned executor ({result.status}): {result.error or 'no answer'}"[:500]
