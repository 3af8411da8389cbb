"""Reading an executor's reply: a tagged section, the candidate a reply picks, the code in a
reply, an answer already in the form the scorer reads, and what to tell the executor about a
failed program run.
"""

from __future__ import annotations

import ast
import re

from scoreflow.tasks.gsm8k import extract_number
from scoreflow.tasks.math import last_boxed
from scoreflow.sandbox import SandboxResult

FAILURE_CHARS = 1500          # tail of a failed program's output fed back to the executor
CONCISE_WORDS = 6             # a QA answer this short (one line) needs no extraction call
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tagged(text: str, tag: str) -> str | None:
    """Content of the last <tag>...</tag> (an unclosed last tag runs to the end), stripped."""
    found = re.findall(rf"<{tag}>(.*?)(?:</{tag}>|\Z)", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


_CHOICE = re.compile(r"(?i:choice|answer|solution|candidate|option|pick|select(?:ed)?|best)\W{0,5}"
                     r"(?:(?i:is)\W{1,5})?\(?([A-Z])\)?(?![A-Za-z])")
_LONE_LETTER = re.compile(r"\W*([A-Z])\W*")


def chosen_letter(reply: str, count: int) -> int | None:
    """Index of the candidate a reply picks: the last explicit "Choice: X" ("answer is
    (X)", "candidate X", ...) naming one of `count` candidates, else a reply that is just
    a letter; None when it names none."""
    letters = [m.group(1) for m in _CHOICE.finditer(reply)]
    if not letters and (lone := _LONE_LETTER.fullmatch(reply)):
        letters = [lone.group(1)]
    return next((LETTERS.index(x) for x in reversed(letters) if LETTERS.index(x) < count), None)


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign)


def code_block(text: str, entry_point: str | None = None) -> str:
    """The code in a reply: the last Python code block that defines `entry_point`, else
    the last Python code block, else the whole text (already bare code)."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if entry_point:
        defining = re.compile(rf"\bdef\s+{re.escape(entry_point)}\s*\(")
        blocks = [b for b in blocks if defining.search(b)] or blocks
    return (blocks[-1] if blocks else text).strip()


def sanitize_code(code: str) -> str:
    """Keep only imports, definitions and assignments at the top level (drops example
    calls, prints, asserts and `if __name__ == "__main__":` blocks); unparsable code is
    returned unchanged (it fails the tests on its own)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    kept = [node for node in tree.body if isinstance(node, _DEFINITIONS)]
    return code if len(kept) == len(tree.body) else ast.unparse(ast.Module(kept, type_ignores=[]))


def failure_text(result: SandboxResult) -> str:
    """What to tell the executor about a failed program run: the tail of its output."""
    detail = (result.stderr.strip() or result.stdout.strip())[-FAILURE_CHARS:]
    if result.status == "timeout":
        return "the program did not finish in time" + (f"; its output:\n{detail}" if detail else "")
    return detail or f"the program failed ({result.status}, exit status {result.returncode})"


_BARE_NUMBER = re.compile(r"[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*\.?")
_ANSWER_PREFIX = re.compile(r"^(?i:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?)\b\s*[:\-]?\s*")


def answer_in_form(text: str, kind: str) -> str | None:
    """The answer when `text` already states it in `kind`'s form, else None."""
    stripped = text.strip()
    if kind == "boxed":
        boxed = last_boxed(text)
        return f"\\boxed{{{boxed.strip()}}}" if boxed and boxed.strip() else None
    if kind == "number":
        if not (_BARE_NUMBER.fullmatch(stripped) or last_boxed(text) is not None):
            return None
        number = extract_number(text)
        return None if number is None else (str(int(number)) if number.is_integer() else repr(number))
    short = _ANSWER_PREFIX.sub("", stripped)
    return short if short and "\n" not in short and len(short.split()) <= CONCISE_WORDS else None
