"""The executor endpoint of a run: a given OpenAI-compatible URL, or our own server on loopback.

    with executor_endpoint(cfg.executor_url) as url:    # None: serve the default model here
        ... ExecutorClient(url, ...) ...
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..llama.registry import DEFAULT_MODEL

EMBEDDED_BATCH = 8          # concurrent executor requests decoded together
EMBEDDED_CONTEXT = 2048     # operator prompts hold the problem and earlier answers


@contextlib.contextmanager
def executor_endpoint(url: str | None) -> Iterator[str]:
    """`url` as it is, or (None) the base default model served by our OpenAI-compatible
    server on a free loopback port for the duration of the block."""
    if url is not None:
        yield url
        return
    from ..engine.local import serve_locally  # torch and the model only when we serve one

    with serve_locally(DEFAULT_MODEL, max_batch=EMBEDDED_BATCH, max_seq_len=EMBEDDED_CONTEXT,
                       who="executor") as server:
        yield server.base_url
