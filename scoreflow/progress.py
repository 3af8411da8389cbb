"""One-line progress reports with an ETA for the long stages of a run."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints after `every_s` seconds (not at once: a first ETA would be noise) and at the end."""

    def __init__(self, label: str, total: int, every_s: float = 10.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        print(f"  {self.label}: {self.done}/{self.total}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s {note}",
              file=sys.stderr, flush=True)
