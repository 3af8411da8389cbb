"""A process-wide budget for the memory of concurrent sandbox runs.

Each run may map up to its `memory_mb` (RLIMIT_AS), and nothing else bounds how many run at
once: 32 concurrent workflow runs, each allowed 50 operator calls at 1 GiB, could ask for far
more memory than the machine has. So every run takes its `memory_mb` from one budget before
it starts and gives it back when it ends; runs that do not fit wait, in arrival order (a
large run is not overtaken forever by small ones). A run asking for more than the whole
budget waits until it can run alone, and then does.

The budget is shared by every thread and event loop of the process (`run_python` runs its
own loop with asyncio.run), so its count sits behind a threading lock, and a waiter is
woken through its own loop. Its size: SCOREFLOW_SANDBOX_MEMORY_MB if set, else half of the
physical memory.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

ENV_VAR = "SCOREFLOW_SANDBOX_MEMORY_MB"


class MemoryBudget:
    """`async with budget.share(memory_mb):` holds that much of `total_mb` (at most all of
    it) for the duration of the block."""

    def __init__(self, total_mb: int):
        if total_mb < 1:
            raise ValueError(f"a sandbox memory budget must be at least 1 MB, got {total_mb}")
        self.total_mb = total_mb
        self._lock = threading.Lock()
        self._used_mb = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @asynccontextmanager
    async def share(self, memory_mb: int) -> AsyncIterator[None]:
        need = min(memory_mb, self.total_mb)
        await self._take(need)
        try:
            yield
        finally:
            self._give(need)

    async def _take(self, need: int) -> None:
        with self._lock:
            if not self._waiting and self._used_mb + need <= self.total_mb:
                self._used_mb += need
                return
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((need, turn))
        try:
            await turn
        except BaseException:  # cancelled while waiting, or after its turn came but before it ran
            with self._lock:
                granted = all(waiter is not turn for _, waiter in self._waiting)
                if not granted:
                    self._waiting.remove((need, turn))
            if granted:
                self._give(need)
            raise

    def _give(self, need: int) -> None:
        with self._lock:
            self._used_mb -= need
            while self._waiting and self._used_mb + self._waiting[0][0] <= self.total_mb:
                mb, turn = self._waiting.popleft()
                try:
                    turn.get_loop().call_soon_threadsafe(_start, turn)
                except RuntimeError:  # its loop is closed: nobody is waiting there any more
                    continue
                self._used_mb += mb


def _start(turn: asyncio.Future) -> None:
    if not turn.done():  # a cancelled waiter gives its share back itself
        turn.set_result(None)


def default_total_mb() -> int:
    """SCOREFLOW_SANDBOX_MEMORY_MB, else half of the physical memory."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        if not configured.isdigit():
            raise ValueError(f"{ENV_VAR} must be a whole number of MB, got {configured!r}")
        return int(configured)
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20) // 2


PROCESS_BUDGET = MemoryBudget(default_total_mb())
