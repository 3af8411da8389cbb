"""Final answers of MAgICoRE chains, per dataset: how the Solver is asked to state the answer,
how it is read back, and when two answers are the same. Reading and comparing reuse the
benchmark scorers in `scoreflow.tasks`, so a chain's answer means what the scorer reads.

    GSM8K, SVAMP  the final number (tasks.gsm8k.extract_number), compared as numbers
    MATH          the last \\boxed{} (tasks.math.last_boxed), compared with MATH equivalence
    SAT, MMLU     the option letter (tasks.magicore_sets.extract_option)

An answer key is a short string; `\\boxed{key}` is how a key is handed to the scorer.
Chains whose text states no answer have key None: they are kept and ranked like any chain,
but they form no answer group and cast no vote (difficulty.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from scoreflow.tasks.gsm8k import extract_number
from scoreflow.tasks.magicore_sets import extract_option
from scoreflow.tasks.math import is_equiv, last_boxed
from scoreflow.tasks.numeric import same_number


def number_key(text: str) -> str | None:
    """The final number as a canonical string ("18" for 18.0), or None."""
    number = extract_number(text)
    if number is None:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def boxed_key(text: str) -> str | None:
    """The content of the last \\boxed{}, stripped, or None."""
    boxed = last_boxed(text)
    return boxed.strip() if boxed and boxed.strip() else None


def math_key(text: str) -> str | None:
    """For open math answers of unknown source: the last \\boxed{}, else the final number."""
    return boxed_key(text) or number_key(text)


def _same_number(a: str, b: str) -> bool:
    return same_number(float(a), float(b))


@dataclass(frozen=True)
class AnswerFormat:
    """task: the `load_task` name; instruction: how the Solver and Refiner are told to state
    the answer; extract: chain text -> answer key or None; same: do two keys denote one answer."""

    task: str
    instruction: str
    extract: Callable[[str], str | None]
    same: Callable[[str, str], bool]

    def answers(self, texts: list[str], known: Sequence[str] = ()) -> list[str | None]:
        """Answer keys of `texts`, each replaced by the first equivalent key among `known` and
        the keys before it, so equal answers group under one spelling ("0.5" and "\\frac12")."""
        keys, seen = [], list(known)
        for text in texts:
            key = self.extract(text)
            if key is not None:
                key = next((k for k in seen if k == key or self.same(k, key)), key)
                if key not in seen:
                    seen.append(key)
            keys.append(key)
        return keys

    def scorable(self, key: str | None) -> str:
        """The text the task's scorer reads for this key ("" when there is none)."""
        return "" if key is None else f"\\boxed{{{key}}}"


# No example value ("e.g. \\boxed{42}"): small models copy it, and it then wins votes.
_NUMBER_INSTRUCTION = "End with the final answer, a single number, inside \\boxed{}."
_OPTION_INSTRUCTION = "End with the letter of the correct option inside \\boxed{}."

FORMATS: dict[str, AnswerFormat] = {
    "gsm8k": AnswerFormat("magicore-gsm8k", _NUMBER_INSTRUCTION, number_key, _same_number),
    "svamp": AnswerFormat("magicore-svamp", _NUMBER_INSTRUCTION, number_key, _same_number),
    "math": AnswerFormat("magicore-math", "End with the final answer in \\boxed{}.", boxed_key, is_equiv),
    "sat": AnswerFormat("magicore-sat", _OPTION_INSTRUCTION, extract_option, str.__eq__),
    "mmlu": AnswerFormat("magicore-mmlu", _OPTION_INSTRUCTION, extract_option, str.__eq__),
}
# ScoreFlow math workflows (GSM8K or MATH, not told which): boxed if present, else a number.
OPEN_MATH = AnswerFormat("math", "End with the final answer in \\boxed{}.", math_key, is_equiv)
DATASETS = tuple(FORMATS)


def answer_format(dataset: str) -> AnswerFormat:
    if dataset not in FORMATS:
        raise ValueError(f"unknown MAgICoRE dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return FORMATS[dataset]
