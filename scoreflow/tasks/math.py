"""MATH (Hendrycks et al.): competition problems scored by answer equivalence.

Gold = the last `\\boxed{}` of the reference `solution`; prediction = the last
`\\boxed{}` / `\\fbox{}` of the answer, else the whole answer. Two answers are
equivalent when their normalised forms (latex.py) are equal, or when they evaluate to
the same number (latex_eval.py, compared by numeric.same_number). Bracketed tuples and
intervals are compared item by item in order (and bracket type must match); bare comma
lists ("-2, 1") item by item in any order, since MATH uses them for "all solutions".
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import AnswerTask, Question
from .data import aflow_rows, check_split
from .latex import matching_brace, normalize, split_items
from .latex_eval import evaluate
from .numeric import same_number

SPLITS = ("validate", "test")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (balanced braces), else None.

    `\\boxed 5` (argument without braces) gives the token after the space.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    rest = matches[-1].end()
    if text.startswith("{", rest):
        close = matching_brace(text, rest)
        return None if close is None else text[rest + 1 : close]
    token = re.match(r"\s+([^\s$]+)", text[rest:])
    return token.group(1) if token else None


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = evaluate(a), evaluate(b)
    return x is not None and y is not None and same_number(x, y)


def _same_unordered(a: list[str], b: list[str]) -> bool:
    unmatched = list(b)
    for item in a:
        hit = next((i for i, other in enumerate(unmatched) if _same_value(item, other)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return not unmatched


def is_equiv(a: str, b: str) -> bool:
    """True when the two MATH answers denote the same value (see module docstring)."""
    x, y = normalize(a), normalize(b)
    if x == y:
        return True
    (bx, ix), (by, iy) = split_items(x), split_items(y)
    if len(ix) == 1 and len(iy) == 1:
        return _same_value(x, y)
    if bx != by or len(ix) != len(iy):
        return False
    if bx:
        return all(_same_value(p, q) for p, q in zip(ix, iy))
    return _same_unordered(ix, iy)


def check_math(gold: str, answer: str) -> float:
    """1.0 iff the answer's final boxed expression (or the answer) is equivalent to gold."""
    prediction = last_boxed(answer)
    return float(is_equiv(gold, answer if prediction is None else prediction))


def load(split: str, data_dir: Path) -> AnswerTask:
    """`aflow/math_<split>.jsonl`; ids are `math-<split>-<row index>` (rows carry none)."""
    check_split("math", split, SPLITS)
    questions = []
    for i, row in enumerate(aflow_rows(data_dir, "math", split, ("problem", "solution"))):
        gold = last_boxed(row["solution"])
        if gold is None:
            path = data_dir / "aflow" / f"math_{split}.jsonl"
            raise ValueError(f"{path}: row {i + 1}: the solution has no \\boxed{{}} answer")
        questions.append(Question(f"math-{split}-{i}", row["problem"], gold, row))
    return AnswerTask("math", "math", questions, check_math)
