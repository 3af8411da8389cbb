"""MAgICoRE's evaluation sets: `magicore/<NAME>.json`, JSON arrays of {question, gold_answer}.

Each set has one split, "test". GSM8K and SVAMP golds are floats (18.0) checked
numerically like GSM8K; MATH-500 golds are LaTeX answers checked with MATH equivalence;
SAT and MMLU list lettered options in the question and the gold is the letter. MAgICoRE
targets math reasoning, so every set has family "math".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from .base import AnswerTask, Family, Question
from .data import check_split, read_json_array
from .gsm8k import check_number
from .math import check_math, last_boxed

SPLITS = ("test",)

_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?:is|:)?\s*:?\s*\(?\$?([A-E])\b")
_BARE_LETTER = re.compile(r"\(?([A-E])[).:]?")
_PAREN_LETTER = re.compile(r"\(([A-E])\)")


def extract_option(text: str) -> str | None:
    """The option letter an answer picks, from the last `\\boxed{}` if any, else the text:
    the whole reply being a letter ("C", "(C)", "C)"), else the last "answer is X" /
    "Answer: X", else the last "(X)"; None when no letter is stated."""
    text = (last_boxed(text) or text).strip()
    bare = _BARE_LETTER.fullmatch(text)
    if bare:
        return bare.group(1)
    stated = _ANSWER_LETTER.findall(text) or _PAREN_LETTER.findall(text)
    return stated[-1] if stated else None


def check_option(gold: str, answer: str) -> float:
    """1.0 iff the chosen option letter is the gold letter."""
    return float(extract_option(answer) == gold.strip().upper())


# name -> (file stem, family, checker)
SETS: dict[str, tuple[str, Family, Callable[[str, str], float]]] = {
    "magicore-gsm8k": ("GSM8K", "math", check_number),
    "magicore-svamp": ("SVAMP", "math", check_number),
    "magicore-math": ("MATH", "math", check_math),
    "magicore-sat": ("SAT", "math", check_option),
    "magicore-mmlu": ("MMLU", "math", check_option),
}


def load(name: str, split: str, data_dir: Path) -> AnswerTask:
    """`magicore/<FILE>.json` for one of SETS; ids are `<name>-<row index>`."""
    check_split(name, split, SPLITS)
    stem, family, check = SETS[name]
    rows = read_json_array(data_dir / "magicore" / f"{stem}.json", ("question", "gold_answer"))
    questions = [
        Question(id=f"{name}-{i}", prompt=r["question"], gold=str(r["gold_answer"]), row=r)
        for i, r in enumerate(rows)
    ]
    return AnswerTask(name, family, questions, check)
