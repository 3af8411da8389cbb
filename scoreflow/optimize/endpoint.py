"""The executor endpoint of a run: a given OpenAI-compatible URL, or our own server on loopback.

    with executor_endpoint(cfg.executor_url, cfg.executor_model) as url:  # no URL: serve the model here
        ... ExecutorClient(url, ...) ...
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..llama.registry import DEFAULT_MODEL

EMBEDDED_BATCH = 8          # concurrent executor requests decoded together
EMBEDDED_CONTEXT = 2048     # operator prompts hold the problem and earlier answers


@contextlib.contextmanager
def executor_endpoint(url: str | None, model: str | None = None) -> Iterator[str]:
    """`url` as it is, or (None) `model` (by default the embedded SmolLM2-135M) served by our
    OpenAI-compatible server on a free loopback port for the duration of the block."""
    if url is not None:
        yield url
        return
    from ..engine.local import serve_locally  # torch and the model only when we serve one

    with serve_locally(model or DEFAULT_MODEL, max_batch=EMBEDDED_BATCH, max_seq_len=EMBEDDED_CONTEXT,
                       who="executor") as server:
        yield server.base_url
