"""`gather`: asyncio.gather that leaves nothing running behind it.

With plain `asyncio.gather`, when one awaitable raises, the others keep running after the
caller has moved on (and may write to a run directory or spend API calls). Here they are
cancelled and awaited first. Used by generated workflows (their `asyncio.gather`) and by
MAgICoRE's runner.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def gather(*awaitables: Awaitable[Any]) -> list[Any]:
    """The results in order; if one raises, the others are cancelled and awaited, then it is re-raised."""
    tasks: list[asyncio.Future] = []
    try:
        for awaitable in awaitables:
            tasks.append(asyncio.ensure_future(awaitable))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
