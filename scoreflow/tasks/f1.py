"""Token F1 between a predicted and a gold answer string (SQuAD / DROP style).

Tokens come from splitting on whitespace and hyphens, lowercased; punctuation is removed
(after trimming it from the ends, so "11.4," stays the number 11.4), the articles
a/an/the are dropped, and numbers get one canonical form ("11918.0" = "11918",
"0.08" = ".08", "1,200" = "1200"), as in the official DROP evaluator.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = string.punctuation


def _as_number(token: str) -> str | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return str(value) if math.isfinite(value) else None


def answer_tokens(text: str) -> list[str]:
    """Normalised tokens of an answer string."""
    tokens = []
    for raw in re.split(r"[\s\-]+", text.lower()):
        token = raw.strip(_PUNCTUATION)
        number = _as_number(raw) or _as_number(token)
        if number is None:
            token = "".join(ch for ch in token if ch not in _PUNCTUATION)
            number = _as_number(token)
        token = number or token
        if token and token not in _ARTICLES:
            tokens.append(token)
    return tokens


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall; 1.0 when both normalise to nothing."""
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
