"""Safe numeric value of a small LaTeX arithmetic expression (no `eval`).

A recursive-descent parser over numbers, `+ - * / ^`, `\\cdot \\times \\div`, parentheses
and braces, implicit products (`2\\sqrt{3}`, `3\\pi`), `\\frac{a}{b}`, `\\sqrt{a}`,
`\\sqrt[n]{a}` and `\\pi`. Anything else (a variable, an unknown command, complex or
overflowing results) gives None, so callers fall back to comparing text.
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"\d+(?:\.\d+)?|\\[a-zA-Z]+|\S")
_PRODUCT_OPS = {"*", "/", r"\cdot", r"\times", r"\div"}
_MAX_EXPONENT = 1e4  # beyond this a float power is meaningless for answer checking


class _Unsupported(Exception):
    """The expression uses something this evaluator does not handle."""


class _Parser:
    def __init__(self, text: str):
        self.tokens = _TOKEN.findall(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unsupported(f"expected {expected!r}, got {tok!r}")
        self.pos += 1
        return tok

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in _PRODUCT_OPS:
                self.take()
                rhs = self.unary()
                value = value / rhs if tok in ("/", r"\div") else value * rhs
            elif tok is not None and self._starts_primary(tok):
                value *= self.power()  # implicit product: 2\sqrt{3}
            else:
                return value

    def unary(self) -> float:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
        return self.power()

    def power(self) -> float:
        base = self.primary()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.unary() if self.peek() == "-" else self.primary()
        if abs(exponent) > _MAX_EXPONENT:
            raise _Unsupported("exponent too large")
        result = base**exponent
        if isinstance(result, complex):
            raise _Unsupported("complex result")
        return result

    @staticmethod
    def _starts_primary(tok: str) -> bool:
        return tok[0].isdigit() or tok in ("(", "{", r"\frac", r"\sqrt", r"\pi")

    def group(self) -> float:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def primary(self) -> float:
        tok = self.take()
        if tok[0].isdigit():
            return float(tok)
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == r"\pi":
            return math.pi
        if tok == r"\frac":
            return self.group() / self.group()
        if tok == r"\sqrt":
            degree = 2.0
            if self.peek() == "[":
                self.take()
                degree = self.expr()
                self.take("]")
            radicand = self.group()
            if radicand < 0:
                raise _Unsupported("root of a negative number")
            return radicand ** (1.0 / degree)
        raise _Unsupported(f"unsupported token {tok!r}")


def evaluate(text: str) -> float | None:
    """Numeric value of a normalised LaTeX expression, or None if it is not plain arithmetic."""
    parser = _Parser(text)
    try:
        value = parser.expr()
    except (_Unsupported, ZeroDivisionError, OverflowError, ValueError):
        return None
    if parser.peek() is not None or not math.isfinite(value):
        return None
    return value
