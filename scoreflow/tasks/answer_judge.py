"""An LLM judge for test-time scoring, as the paper does for MATH, DROP and HotpotQA (PAPERS.md §S4).

Rule-based scorers miss answers that are right in another form ("1/2" vs "0.5 dollars",
"Paris, France" vs "Paris"). At test time the paper asks an LLM whether the prediction
matches the reference ("to avoid format inconsistency"), and its verdict is the score;
optimisation keeps the rule-based scores. Two modes:

    verdict (the paper's):  S_judged(q, a) = 1[judge says a matches q's reference]
    rescue (ours):          S_judged(q, a) = max(S(q, a), 1[judge says so])

In verdict mode every non-empty answer is judged, and a partial rule score (DROP's F1) does not
survive a No. In rescue mode the judge can only lift an answer the rules reject, never demote
one they accept, and a rule-perfect answer costs no call. The judge runs at temperature 0 and
must start its reply with Yes or No; any other reply counts as No and is counted in `unreadable`.

    judge = AnswerJudge(executor_client)
    task = JudgedTask(task, judge, "verdict")   # a Task whose ascore() consults the judge
"""

from __future__ import annotations

import re
from typing import Any

from .base import Question, Task

JUDGED_TASKS = ("math", "drop", "hotpotqa")  # where the paper uses a judge at test time
JUDGE_MODES = ("verdict", "rescue")

JUDGE_PROMPT = """\
You grade answers to a benchmark question against the reference answer.

Question:
{question}

Reference answer (alternatives separated by "|"):
{gold}

Candidate answer:
{answer}

Does the candidate's final answer mean the same as the reference answer? Ignore formatting,
units written out or not, and extra explanation; a different value or entity is wrong.
Reply with one word: Yes or No."""

_VERDICT = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """True for a reply starting with "Yes", False for "No", else None."""
    found = _VERDICT.match(reply)
    return None if found is None else found.group(1).lower() == "yes"


class AnswerJudge:
    """Asks `executor` (an ExecutorClient, or anything with its `chat`) whether an answer
    matches the reference."""

    def __init__(self, executor: Any, max_tokens: int = 8):
        self.executor, self.max_tokens = executor, max_tokens
        self.calls = self.unreadable = 0

    async def agrees(self, question: Question, answer: str) -> bool:
        prompt = JUDGE_PROMPT.format(question=question.prompt.strip(), gold=question.gold, answer=answer.strip())
        result = await self.executor.chat([{"role": "user", "content": prompt}], temperature=0.0,
                                          max_tokens=self.max_tokens)
        self.calls += 1
        verdict = parse_verdict(result.text)
        if verdict is None:
            self.unreadable += 1
        return bool(verdict)


class JudgedTask:
    """`task` whose `ascore` is the judge's verdict (mode "verdict") or max(rule-based score,
    verdict) (mode "rescue"); everything else (name, family, questions, score, code-task
    helpers) is the task's own. An empty answer scores 0 without a call."""

    def __init__(self, task: Task, judge: AnswerJudge, mode: str = "verdict"):
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
        self.task, self.judge, self.mode = task, judge, mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    async def ascore(self, question: Question, answer: str) -> float:
        if not answer.strip():
            return 0.0
        if self.mode == "verdict":
            return float(await self.judge.agrees(question, answer))
        rule = await self.task.ascore(question, answer)
        if rule >= 1.0:
            return rule
        return max(rule, float(await self.judge.agrees(question, answer)))
