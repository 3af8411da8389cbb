"""Canonical text form of a LaTeX final answer, so equal MATH answers compare equal.

`normalize` removes what does not change the value — `$`, `\\left`/`\\right`, spacing
commands, `\\dfrac`, degrees, percent signs, unit words, an `x =` prefix, thousands
separators, leading/trailing zeros — and gives `\\frac`/`\\sqrt` arguments braces
(`\\frac12` -> `\\frac{1}{2}`), rewrites `a/b` as `\\frac{a}{b}` and mixed numbers
(`1\\frac{1}{10}`) as one fraction. `split_items` cuts tuples, intervals and lists at
top-level commas so they can be compared item by item.
"""

from __future__ import annotations

import re

# Patterns applied in order; each line is one rule (the "why" is in its comment).
_REWRITES: list[tuple[str, str]] = [
    (r"\\(?:left|right)(?![a-zA-Z])", ""),  # \left( 1, 2 \right) -> (1, 2)
    (r",\\!|\{,\}", ""),  # 5,\!460 and 14{,}916 are thousands separators
    (r"(?<!\\)\\[!,;: ]|~", " "),  # spacing commands (not the \\ row break)
    (r"\\[dt]frac", r"\\frac"),
    (r"\u2212", "-"),  # unicode minus sign
    (r"\\displaystyle", ""),
    (r"\\(le|ge|ne)q(?![a-zA-Z])", r"\\\1"),
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°", ""),  # degrees
    (r"\\%|%", ""),  # 75\% -> 75
    (r"\\\$|\$", ""),  # dollars and math delimiters
    (r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}", r" \1 "),
    (r"(?<=[\d}.])\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\s*$", ""),  # 162 minutes, 100 square units
]
_COMMAND_SPACE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])")  # keep "\pi r" from gluing
_VARIABLE_PREFIX = re.compile(r"\s*(?:\\[a-zA-Z]+|[a-zA-Z]{1,2})(?:_\{?\w+\}?)?\s*=(?!=)")
_PLAIN_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BRACED_ARG_COMMAND = re.compile(r"\\(frac|sqrt)(?![a-zA-Z])")
_SINGLE_BRACED = re.compile(r"([\^_])\{(\w)\}")  # x^{2} -> x^2
_LEADING_DOT = re.compile(r"(?<!\d)\.(?=\d)")  # .5 -> 0.5
_TRAILING_ZEROS = re.compile(r"(\d)\.0+(?!\d)")  # 5.0 -> 5
_SLASH_FRACTION = re.compile(r"(?<![\w.^_])(\d+)/(\d+)(?![\w.])")  # 3/4 -> \frac{3}{4}
_MIXED_NUMBER = re.compile(r"(?<![\d.}^_])(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def matching_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing the `{` at `start`, or None when unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _brace_arguments(s: str) -> str:
    """Give every `\\frac` / `\\sqrt` argument braces: `\\frac1{2}` -> `\\frac{1}{2}`."""
    out, i = [], 0
    while i < len(s):
        m = _BRACED_ARG_COMMAND.match(s, i)
        if not m:
            out.append(s[i])
            i += 1
            continue
        out.append(m.group(0))
        i = m.end()
        if m.group(1) == "sqrt" and s.startswith("[", i) and "]" in s[i:]:
            close = s.index("]", i)
            out.append(s[i : close + 1])
            i = close + 1
        for _ in range(2 if m.group(1) == "frac" else 1):
            if i >= len(s):
                break
            if s[i] == "{":
                close = matching_brace(s, i)
                if close is None:
                    break
                arg, i = s[i + 1 : close], close + 1
            else:
                token = re.match(r"\\[a-zA-Z]+|.", s[i:]).group(0)
                arg, i = token, i + len(token)
            out.append("{" + _brace_arguments(arg) + "}")
    return "".join(out)


def _mixed_to_fraction(m: re.Match[str]) -> str:
    whole, num, den = (int(g) for g in m.groups())
    return rf"\frac{{{whole * den + num}}}{{{den}}}"


def _unwrap_braces(s: str) -> str:
    while s.startswith("{") and matching_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    return s


def normalize(answer: str) -> str:
    """Canonical string for a LaTeX answer (see the module docstring for the rules)."""
    s = answer.strip().rstrip(".").strip()
    for pattern, repl in _REWRITES:
        s = re.sub(pattern, repl, s)
    if s.count("=") == 1 and _VARIABLE_PREFIX.match(s):
        s = s.split("=", 1)[1]  # "x = 5" -> "5"
    s = _COMMAND_SPACE.sub("\\1\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    if _PLAIN_THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = _brace_arguments(s)
    s = _SINGLE_BRACED.sub(r"\1\2", s)
    s = _LEADING_DOT.sub("0.", s)
    s = _TRAILING_ZEROS.sub(r"\1", s)
    s = _SLASH_FRACTION.sub(r"\\frac{\1}{\2}", s)
    s = _MIXED_NUMBER.sub(_mixed_to_fraction, s)
    return _unwrap_braces(s)


def _wraps_whole(s: str) -> bool:
    """True when s[0] is a ( or [ whose partner is the last character."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def split_items(s: str) -> tuple[str, list[str]]:
    """(brackets, items) of a normalised answer, cut at top-level commas.

    "(1,2)" -> ("()", ["1", "2"]); "[0,1)" -> ("[)", ...); "1,-3" -> ("", ["1", "-3"]);
    anything without a top-level comma -> ("", [s]).
    """
    wrapped = _wraps_whole(s)
    inner = s[1:-1] if wrapped else s
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    if len(items) == 1:
        return "", [s]
    return (s[0] + s[-1] if wrapped else ""), items
