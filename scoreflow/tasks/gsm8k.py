"""GSM8K: grade-school word problems scored by numeric match of the final number.

The answer's number is taken from, in order: the last `\\boxed{...}`, the text after the
last "answer is"/"answer:" (its first number), else the last number in the text.
Thousands commas, `$` and trailing periods are tolerated; numbers match as in numeric.py
(whole numbers exactly, others to 1e-6 relative).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import AnswerTask, Question
from .data import aflow_rows, check_split
from .math import last_boxed
from .numeric import same_number

SPLITS = ("validate", "test")

# 1,234,567.89 | 1234.5 | .5 — a comma is a thousands separator only before 3 digits, and
# a minus sign only counts when it does not follow a word or number ("10-20" is 10, 20).
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def extract_number(text: str) -> float | None:
    """The final numeric answer stated in `text`, or None if it has no number."""
    boxed = last_boxed(text)
    if boxed is not None:
        nums = _numbers(boxed)
        return nums[0] if nums else None
    parts = _ANSWER_IS.split(text)
    stated = _numbers(parts[-1]) if len(parts) > 1 else []
    if stated:
        return stated[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def check_number(gold: str, answer: str) -> float:
    """1.0 iff the answer's final number is the gold number (numeric.same_number)."""
    want, got = extract_number(gold), extract_number(answer)
    if want is None:
        raise ValueError(f"gold answer {gold!r} holds no number")
    return float(got is not None and same_number(got, want))


def load(split: str, data_dir: Path) -> AnswerTask:
    """`aflow/gsm8k_<split>.jsonl`; the gold is the `answer` field (a number as text)."""
    check_split("gsm8k", split, SPLITS)
    questions = [
        Question(id=str(r["id"]), prompt=r["question"], gold=r["answer"], row=r)
        for r in aflow_rows(data_dir, "gsm8k", split, ("id", "question", "answer"))
    ]
    return AnswerTask("gsm8k", "math", questions, check_number)
