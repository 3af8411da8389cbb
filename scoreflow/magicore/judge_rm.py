"""An LLM judge as ORM and PRM, over any OpenAI-compatible chat endpoint (reward.py's interfaces).

    ORM: one call per solution, "rate 0-10", reply "Score: N"              -> o = N / 10
    PRM: one call per solution, steps numbered, "Step i: N" for each step  -> s_i = N / 10

Calls run at temperature 0. The score is parsed from the reply text: `ExecutorClient` returns
text only, no token logprobs, so the expectation of the score under the judge's distribution
(sum_N N * P(N)), which would be smoother, is not available; a parsed integer it is.
A reply without a readable score (or a step without one) gets 0.5, uninformative, and is
counted in `unparsed`, so a run reports how often the judge failed instead of hiding it.
Executor errors propagate.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

from scoreflow.executor import ChatResult

from .reward import OutcomeRewardModel, ProcessRewardModel, split_steps

NEUTRAL = 0.5

ORM_PROMPT = """\
Question:
{question}

Proposed solution:
{solution}

How likely is it that the proposed solution is correct, including its final answer? Check it
briefly, then rate it from 0 (certainly wrong) to 10 (certainly correct). End with a line
of exactly this form:
Score: <0-10>"""

PRM_PROMPT = """\
Question:
{question}

Proposed solution, in numbered steps:
{steps}

Rate each step from 0 (certainly wrong) to 10 (certainly correct), judging the step's own
reasoning and arithmetic given the steps before it. Reply with one line per step, exactly:
{form}"""

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE = re.compile(rf"score\s*(?:is|:|=)?\s*\**\s*{_NUMBER}", re.IGNORECASE)
_OUT_OF_10 = re.compile(rf"{_NUMBER}\s*(?:/|out\s+of)\s*10(?!\d)", re.IGNORECASE)
_BARE = re.compile(rf"\W*{_NUMBER}\W*")
_STEP = re.compile(rf"step\s*(\d+)\s*[:=).\-]\s*(?:score\s*[:=]?\s*)?{_NUMBER}", re.IGNORECASE)


class ChatExecutor(Protocol):
    async def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
                   max_tokens: int | None = None) -> ChatResult: ...


def parse_score(reply: str) -> float | None:
    """The 0-10 score a reply gives, scaled to [0, 1]: the last "Score: N", else the last
    "N/10" ("N out of 10"), else a reply that is only a number; None if none is in range."""
    found = _SCORE.findall(reply) or _OUT_OF_10.findall(reply)
    if not found and (bare := _BARE.fullmatch(reply)):
        found = [bare.group(1)]
    value = float(found[-1]) if found else None
    return value / 10 if value is not None and 0 <= value <= 10 else None


def parse_step_scores(reply: str, n_steps: int) -> list[float | None]:
    """Scores of steps 1..n from "Step i: N" lines (the last line for a step wins); None
    where a step has no score in range."""
    scores: list[float | None] = [None] * n_steps
    for step, value in _STEP.findall(reply):
        i, v = int(step) - 1, float(value)
        if 0 <= i < n_steps and 0 <= v <= 10:
            scores[i] = v / 10
    return scores


class JudgeRewardModel(OutcomeRewardModel, ProcessRewardModel):
    """ORM and PRM by asking `executor` (an ExecutorClient, or anything with its `chat`)."""

    def __init__(self, executor: ChatExecutor, max_tokens: int | None = 512):
        self.executor, self.max_tokens = executor, max_tokens
        self.calls = 0
        self.unparsed = 0  # replies (ORM) or steps (PRM) that got NEUTRAL for want of a score

    async def _ask(self, prompt: str) -> str:
        result = await self.executor.chat([{"role": "user", "content": prompt}], temperature=0.0,
                                          max_tokens=self.max_tokens)
        self.calls += 1
        return result.text

    def _or_neutral(self, score: float | None) -> float:
        if score is None:
            self.unparsed += 1
            return NEUTRAL
        return score

    async def _orm_one(self, question: str, solution: str) -> float:
        return self._or_neutral(parse_score(await self._ask(ORM_PROMPT.format(question=question, solution=solution))))

    async def orm(self, question: str, solutions: list[str]) -> list[float]:
        return list(await asyncio.gather(*(self._orm_one(question, s) for s in solutions)))

    async def prm(self, question: str, solution: str) -> list[float]:
        steps = split_steps(solution)
        listing = "\n\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1))
        form = "\n".join(f"Step {i}: <0-10>" for i in range(1, len(steps) + 1))
        reply = await self._ask(PRM_PROMPT.format(question=question, steps=listing, form=form))
        return [self._or_neutral(s) for s in parse_step_scores(reply, len(steps))]
