"""Messages between the parent and a workflow worker: length-prefixed JSON frames.

    stream.write(frame({"op": "Custom", ...}))
    message = await read_message(reader, limit)    # None at a clean end of the stream
    data = await read_frame(reader, limit)          # the same, undecoded: count it, then decode(data)

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON (ASCII-escaped, so
lone surrogates survive). The reader refuses frames over `limit` bytes before reading
them, so a worker cannot make the parent buffer or decode more than that. `encode` is a
frame's body: its length is what a message costs the side that decodes it, every element
of a list included (at least its two quotes and a separator), which a count of characters
would miss.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A message the other side's code cannot have sent (a worker is not trusted)."""


def encode(message: Any) -> bytes:
    return json.dumps(message).encode()


def frame(message: Any) -> bytes:
    data = encode(message)
    return HEADER.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader, limit: int) -> Any:
    """The next message, or None when the stream ends between frames."""
    data = await read_frame(reader, limit)
    return None if data is None else decode(data)


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The next frame's body, undecoded, or None when the stream ends between frames."""
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
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside a message") from None


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"a message that is not JSON ({type(e).__name__})") from None
