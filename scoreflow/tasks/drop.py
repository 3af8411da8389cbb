"""DROP: discrete reasoning over paragraphs, scored by max token F1 over the golds.

`context` already holds "Passage: ... Question: ... Answer:", so it is the prompt as is;
`ref_text` joins the acceptable answers with "|".
"""

from __future__ import annotations

from pathlib import Path

from .base import AnswerTask, Question
from .data import aflow_rows, check_split
from .f1 import token_f1

SPLITS = ("validate", "test")


def check_drop(gold: str, answer: str) -> float:
    """Best token F1 of the answer against any of the "|"-separated gold answers."""
    return max(token_f1(answer, ref) for ref in gold.split("|"))


def load(split: str, data_dir: Path) -> AnswerTask:
    """`aflow/drop_<split>.jsonl`."""
    check_split("drop", split, SPLITS)
    questions = [
        Question(id=str(r["id"]), prompt=r["context"], gold=r["ref_text"], row=r)
        for r in aflow_rows(data_dir, "drop", split, ("id", "context", "ref_text"))
    ]
    return AnswerTask("drop", "qa", questions, check_drop)
