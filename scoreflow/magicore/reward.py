"""Reward models: an ORM scores whole solutions, a PRM scores each step (the MAgICoRE paper).

    await rm.orm(question, solutions)        -> [o_1, ..., o_k]        o in [0, 1]
    await rm.prm(question, solution)         -> [s_1, ..., s_n]        one per step, s in [0, 1]
    await rm.prm_batch(question, solutions)  -> [[s_11, ...], ...]     (batched where it can be)

Steps are the paragraphs of a solution: `split_steps` cuts on blank lines (a solution without
any is one step). Implementations: `local_rm.LocalLMRewardModel` (a causal LM run here, ORM and
PRM), `value_head_rm.ValueHeadRewardModel` (a value-head ORM run here) and
`judge_rm.JudgeRewardModel` (an LLM judge behind an OpenAI-compatible API, ORM and PRM).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_steps(solution: str) -> list[str]:
    """Paragraphs of `solution` (split on blank lines), stripped, empty ones dropped;
    at least one step (the stripped text itself)."""
    steps = [p.strip() for p in _BLANK_LINE.split(solution) if p.strip()]
    return steps or [solution.strip()]


class OutcomeRewardModel(ABC):
    @abstractmethod
    async def orm(self, question: str, solutions: list[str]) -> list[float]:
        """One score in [0, 1] per solution: how likely it is correct."""


class ProcessRewardModel(ABC):
    @abstractmethod
    async def prm(self, question: str, solution: str) -> list[float]:
        """One score in [0, 1] per step of `solution` (split_steps)."""

    async def prm_batch(self, question: str, solutions: list[str]) -> list[list[float]]:
        """`prm` of every solution (concurrently; implementations may batch)."""
        return list(await asyncio.gather(*(self.prm(question, s) for s in solutions)))


@dataclass(frozen=True)
class RewardModels:
    """The ORM and the PRM of a run (one object may play both)."""

    orm: OutcomeRewardModel
    prm: ProcessRewardModel
