"""The fixed prompts and texts that parity tests, tokenizer tests and bench/bench_qwen_parity.py
share, so a benchmark measures on the very inputs its CI test checks. A prompt is either plain
text or a chat (a list of {"role", "content"} messages, rendered by the model's chat template)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

# The default model (SmolLM2-135M-Instruct) against transformers, and our engine's greedy tokens.
DEFAULT_MODEL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],  # chat
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",  # code
    "1234 + 5678 = 6912. 31415 * 2 = ",  # digits
    "Ünïcödé: naïve café, 日本語, emoji 🙂 —",  # unicode
    [{"role": "system", "content": "You solve math problems."},
     {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in total?"}],
]

# Qwen2.5-Coder-0.5B-Instruct against transformers (the CI test's two; the benchmark adds more).
QWEN_PROMPTS = [  # chat-templated, so the default system turn and the special tokens are exercised
    [{"role": "user", "content": "Fix this:\n\tdef add(a, b):\r\n\t\treturn a - b  # 加法 🙂"}],
    [{"role": "system", "content": "Answer with digits only."},
     {"role": "user", "content": "What is 48 + 24 * 3? Then 1234567 - 89."}],
]
EXTRA_TEXTS = [  # code and scripts beyond the shared corpus
    "def f(x):\n\tif x:\n\t\treturn '\\t'\r\n\treturn None\r\n", "int main() {\r\n\treturn 0;\r\n}\r\n",
    "# 计算斐波那契数列\nprint('你好, 世界') # コメント 한국어", "emoji 🙂👩‍💻🇫🇷 in `code` ✅",
    "x\t=\t1\t\t# tabs\n\n\n\ty = [1,2,3]", "1234567890 + 0.000001 = 1e-6; 2**64 == 18446744073709551616",
    "<|im_start|>system\nhi<|im_end|><|endoftext|><tool_call>{\"a\": 1}</tool_call><|fim_prefix|>",
]

# Chat templates rendered in Python against their own jinja text.
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": "ok\n"},
     {"role": "user", "content": "more\n\nlines"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"},
     {"role": "assistant", "content": "y"}],
]


def corpus() -> list[str]:
    """>= 200 strings: real benchmark text (maths, code) plus hand-made edge cases."""
    aflow = Path(str(importlib.resources.files("scoreflow") / "data")) / "aflow"  # the packaged splits
    rows = lambda name, n: [json.loads(l) for l in (aflow / name).read_text().splitlines()[:n]]  # noqa
    texts = [r["question"] for r in rows("gsm8k_validate.jsonl", 80)]
    texts += [r["solution"] for r in rows("math_validate.jsonl", 40)]  # LaTeX
    texts += [r["prompt"] + r["canonical_solution"] for r in rows("humaneval_validate.jsonl", 30)]
    texts += [r["context"][:600] for r in rows("drop_validate.jsonl", 20)]
    texts += [
        "", " ", "  ", "\n", "\n\n\n", "\t\t x", "a  b   c    d", "trailing   ", "   leading",
        "0", "7", "42", "1234567890", "3.14159", "-0.5e-10", "1,000,000", "$12.50", "99%", "x^2+y^2=z^2",
        "naïve café", "日本語のテキスト", "中文字符", "emoji 🙂🚀👍🏽", "Ελληνικά", "русский текст", "עברית",
        "मराठी", "e\u0301", "zero\u200bwidth", "tab\there", "crlf\r\nline", "mixed\t \n \r",
        "<|im_start|>user\nhello<|im_end|>", "<|endoftext|>", "not <|special", "<file_sep>path",
        "def f(x):\n    return x  # comment", "if (a && b) { return -1; }", "lambda: None",
        "I'm you're they've we'll he'd it's", "HELLO World", "camelCaseName snake_case_name",
        "https://example.com/a?b=c&d=e", "user@example.com", "\\frac{1}{2} + \\sqrt{3}",
        "```python\nprint('hi')\n```", "    " * 8 + "indented", "a" * 300, "ab" * 100 + " " * 50,
    ]
    texts += [" ".join(str(i * 37 % 1000) for i in range(k, k + 12)) for k in range(0, 240, 20)]
    assert len(texts) >= 200
    return texts


def as_ids(tok, prompt) -> list[int]:
    """A prompt's token ids: a chat through the tokenizer's chat template, plain text as it is."""
    text = tok.apply_chat_template(prompt) if isinstance(prompt, list) else prompt
    return tok.encode(text)
