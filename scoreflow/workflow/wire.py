"""Messages between the parent and a workflow worker: length-prefixed JSON frames.

    stream.write(frame({"op": "Custom", ...}))
    message = await read_message(reader, limit)    # None at a clean end of the stream

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON (ASCII-escaped, so
lone surrogates survive). The reader refuses frames over `limit` bytes before reading
them, so a worker cannot make the parent buffer more than that.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A message the other side's code cannot have sent (a worker is not trusted)."""


def frame(message: Any) -> bytes:
    data = json.dumps(message).encode()
    return HEADER.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader, limit: int) -> Any:
    """The next message, or None when the stream ends between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProtocolError("the stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"a message of {size} bytes; the limit is {limit}")
    try:
        return json.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside a message") from None
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"a message that is not JSON ({type(e).__name__})") from None
