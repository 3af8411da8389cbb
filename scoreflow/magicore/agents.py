"""The three MAgICoRE roles, played by one executor LLM through an OpenAI-compatible API.

    Solver    k independent step-by-step chains (ref: temperature 0.8, top-p 0.95)
    Reviewer  feedback on one chain whose steps carry their PRM scores "(Score: n/10)",
              told to focus on steps scored below 6/10 and not to write a new solution
    Refiner   rewrites the chain using that feedback

The paper's variants of the roles (loop.py's ablations): the Reviewer without step scores
(LLM self-feedback; also the critic of the Self-Refine baseline, baselines.py), the Refiner
without any Reviewer, one agent that reviews and rewrites in one call (`review_and_refine_jointly`),
and the Solver's model asked whether the question is hard (`judges_hard`).

Every call is a separate chat request with n=1 (portable: not every server supports n > 1),
sampled with the same `Sampling`. With `Sampling.seed` set, each call gets its own seed
(seed + 1000000 * stream + 10000 * iteration + chain index; stream 1 is the budget-matched
baselines' own Solver samples), so a rerun asks the same questions and an on-disk executor
cache can answer it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from scoreflow.executor import ChatResult

from .answers import AnswerFormat
from .reward import split_steps

FOCUS_BELOW = 6  # of 10: the Reviewer looks hardest at steps scored lower (ref)

SOLVER = """\
Solve the following problem step by step. Write each step as its own paragraph, with a blank
line between steps. {answer_instruction}

Problem:
{question}"""

_SCORED = f"""\
Each step of the solution ends with its score, (Score: n/10), from a step verifier: 10 means
the step is certainly correct, 0 that it is certainly wrong.
- Pay attention to the steps scored below {FOCUS_BELOW}/10 and carefully identify the errors in them."""
_UNSCORED = "- Check every step and carefully identify the errors, if any."
NO_REVIEW = "There is no feedback: check every step yourself."  # the no-review ablation's Refiner

REVIEWER = """\
Your task is to give step-by-step feedback on the current solution of a math problem.
{guidance}
- Explain each error and how it can be fixed. Do not write a new solution, only the explanation.

Question:
{question}

Current solution:
{solution}"""

REFINER = """\
Your task is to fix the errors in the current solution of a math problem, using the teacher's
feedback. Review the solution and the feedback, then solve the problem again: write the complete
corrected solution step by step, each step as its own paragraph with a blank line between steps.
{answer_instruction}

Question:
{question}

Current solution:
{solution}

Teacher feedback:
{feedback}"""


# The joint-role ablation: one agent is Reviewer and Refiner at once; the rewrite follows the marker.
CORRECTED = "Corrected solution:"
JOINT = f"""\
Your task is to review the current solution of a math problem and then fix it.
{{guidance}}
- First explain each error and how it can be fixed. Then write the line "{CORRECTED}" and, after it,
the complete corrected solution step by step, each step as its own paragraph with a blank line
between steps. {{answer_instruction}}

Question:
{{question}}

Current solution:
{{solution}}"""

# The llm-difficulty ablation: the Solver's model says whether the question is hard.
DIFFICULTY = """\
Is the following problem easy or hard for you to solve correctly? Do not solve it. Answer with
one word: easy or hard.

Problem:
{question}"""
_VERDICT = re.compile(r"\b(easy|hard)\b", re.I)


class SamplingExecutor(Protocol):
    async def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int | None = None,
                   seed: int | None = None, top_p: float | None = None) -> ChatResult: ...


@dataclass(frozen=True)
class Sampling:
    """How every agent call samples (ref: temperature 0.8, top-p 0.95, at most 1000 tokens)."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int | None = 1000
    seed: int | None = None

    def seed_for(self, iteration: int, index: int, stream: int = 0) -> int | None:
        return None if self.seed is None else self.seed + 1_000_000 * stream + 10_000 * iteration + index


@dataclass
class Ledger:
    """What a method spent on one question: LLM calls (completions) and reported tokens."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, result: ChatResult) -> None:
        self.calls += len(result.texts)
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens

    def merged(self, other: "Ledger") -> "Ledger":
        return Ledger(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                      self.completion_tokens + other.completion_tokens)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def annotate(solution: str, step_scores: list[float] | None) -> str:
    """The solution's steps separated by blank lines, each followed by "(Score: n/10)",
    n = round(10 s), when scores are given."""
    steps = split_steps(solution)
    if step_scores is None:
        return "\n\n".join(steps)
    if len(step_scores) != len(steps):
        raise ValueError(f"{len(step_scores)} step scores for a solution of {len(steps)} steps")
    return "\n\n".join(f"{step} (Score: {round(10 * s)}/10)" for step, s in zip(steps, step_scores))


class Agents:
    """Solver, Reviewer and Refiner on `executor`, stating answers as `answer_format` asks."""

    def __init__(self, executor: SamplingExecutor, answer_format: AnswerFormat, sampling: Sampling = Sampling()):
        self.executor, self.answer_format, self.sampling = executor, answer_format, sampling

    async def _ask(self, prompt: str, ledger: Ledger, iteration: int, index: int, stream: int = 0) -> str:
        s = self.sampling
        result = await self.executor.chat([{"role": "user", "content": prompt}], temperature=s.temperature,
                                          top_p=s.top_p, max_tokens=s.max_tokens,
                                          seed=s.seed_for(iteration, index, stream))
        ledger.add(result)
        return result.text

    async def solve(self, question: str, index: int, ledger: Ledger, stream: int = 0) -> str:
        """Solver chain number `index` of sample stream `stream` (0: MAgICoRE's chains)."""
        prompt = SOLVER.format(answer_instruction=self.answer_format.instruction, question=question)
        return await self._ask(prompt, ledger, 0, index, stream)

    async def judges_hard(self, question: str, ledger: Ledger) -> bool:
        """Whether the model calls the question hard: the last "easy" or "hard" of its reply; a
        reply with neither counts as hard (when the model cannot say, refining is the cautious side)."""
        verdicts = _VERDICT.findall(await self._ask(DIFFICULTY.format(question=question), ledger, 0, 0))
        return not verdicts or verdicts[-1].lower() == "hard"

    async def review(self, question: str, solution: str, step_scores: list[float] | None, ledger: Ledger,
                     iteration: int, index: int) -> str:
        """Feedback on one chain; with step scores, focused on the low-scored steps."""
        prompt = REVIEWER.format(guidance=_UNSCORED if step_scores is None else _SCORED, question=question,
                                 solution=annotate(solution, step_scores))
        return await self._ask(prompt, ledger, iteration, index)

    async def refine(self, question: str, solution: str, step_scores: list[float] | None, feedback: str,
                     ledger: Ledger, iteration: int, index: int) -> str:
        """The chain rewritten using the feedback."""
        prompt = REFINER.format(answer_instruction=self.answer_format.instruction, question=question,
                                solution=annotate(solution, step_scores), feedback=feedback.strip())
        return await self._ask(prompt, ledger, iteration, index)

    async def review_and_refine(self, question: str, solution: str, step_scores: list[float] | None,
                                ledger: Ledger, iteration: int, index: int) -> str:
        """Reviewer then Refiner on one chain (two calls); without step scores, LLM self-feedback."""
        feedback = await self.review(question, solution, step_scores, ledger, iteration, index)
        return await self.refine(question, solution, step_scores, feedback, ledger, iteration, index)

    async def review_and_refine_jointly(self, question: str, solution: str, step_scores: list[float] | None,
                                        ledger: Ledger, iteration: int, index: int) -> str:
        """One agent in both roles (one call): the text after its last "Corrected solution:"
        (its whole reply when the marker is missing)."""
        prompt = JOINT.format(guidance=_UNSCORED if step_scores is None else _SCORED, question=question,
                              answer_instruction=self.answer_format.instruction,
                              solution=annotate(solution, step_scores))
        return (await self._ask(prompt, ledger, iteration, index)).rpartition(CORRECTED)[2].strip()
