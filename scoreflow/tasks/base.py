"""The objects every benchmark module produces: `Question`s and a `Task` that scores them.

A task is one split of one benchmark plus its rule-based evaluator S(q, answer) in [0, 1]
(PAPERS.md §S1). Most tasks compare the answer with a gold string (`AnswerTask`); code tasks
run the answer against hidden tests instead (`code.CodeTask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Family = Literal["math", "qa", "code"]


@dataclass(frozen=True)
class Question:
    """One benchmark question.

    `prompt` is the text a workflow sees; `gold` is the reference in the form the task's
    scorer reads (a number, a LaTeX answer, "|"-joined spans, an option letter, or the
    hidden test code); `row` is the untouched JSON row.
    """

    id: str
    prompt: str
    gold: str
    row: dict[str, Any] = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Task:
    """A loaded split: its questions and the evaluator S(q, answer) in [0, 1]."""

    name: str
    family: Family
    questions: list[Question]

    def score(self, question: Question, answer: str) -> float:
        """Rule-based score of `answer` for `question`, in [0, 1]."""
        raise NotImplementedError

    async def ascore(self, question: Question, answer: str) -> float:
        """Async form of `score`, so the workflow runtime can score many answers at once."""
        return self.score(question, answer)


@dataclass(frozen=True)
class AnswerTask(Task):
    """A task scored by comparing the answer text with the question's gold answer."""

    check: Callable[[str, str], float]  # (gold, answer) -> score in [0, 1]

    def score(self, question: Question, answer: str) -> float:
        return float(self.check(question.gold, answer))
