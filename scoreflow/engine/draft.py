"""Prompt-lookup drafts for speculative decoding: guess a row's next tokens from its own text.

A generated workflow copies much of its prompt (the template's class line, `__init__`, the
operator bindings), and code repeats its own names. So the tokens that followed the last
occurrence of the row's current suffix are a good guess for what comes next:

    context  ... a b c d e ... a b c | ?        suffix "a b c" last seen followed by "d e ..."
    draft    d e ...                            (up to n tokens; longest matching suffix wins)

The guess costs no model call; the engine verifies it in one forward pass (engine.py), so a
wrong guess costs only the compute of the rejected positions, never a different output.

`NgramIndex` keeps, for every n-gram (n = 1..max_ngram) of the context, where its most recent
occurrence that is followed by a token ends: lookups are O(max_ngram), extending by one token
is O(max_ngram), and the prompt is indexed once.
"""

from __future__ import annotations

MAX_NGRAM = 3  # longest suffix matched


class NgramIndex:
    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM):
        self.tokens: list[int] = []
        self.max_ngram = max_ngram
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens to the context: each n-gram that now has a follower points at it."""
        for tok in tokens:
            end = len(self.tokens)  # the n-grams ending just before `tok` are followed by it
            for n in range(1, min(self.max_ngram, end) + 1):
                self._next[tuple(self.tokens[end - n: end])] = end
            self.tokens.append(tok)

    def draft(self, n_tokens: int) -> list[int]:
        """Up to n_tokens that followed the latest earlier occurrence of the longest matching
        suffix (n-gram order max_ngram down to 1); [] when even the last token is new."""
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            start = self._next.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start: start + n_tokens]
        return []
