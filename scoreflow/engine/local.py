"""A model behind our OpenAI-compatible server on a free loopback port, for the length of a block.

    with serve_locally("smollm2-135m-instruct", max_batch=8, max_seq_len=2048) as server:
        ExecutorClient(server.base_url, server.model_name, ...)   # server.engine: its model, tokenizer

What `python -m scoreflow.train` (the embedded executor) and `python -m scoreflow.magicore` (the
embedded solver) run when no URL is given; `python -m scoreflow.serve` is the same server as a
command of its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from ..llama import load_model, load_tokenizer
from .engine import Engine
from .server import OpenAIServer


@contextlib.contextmanager
def serve_locally(model: str | os.PathLike, *, max_batch: int, max_seq_len: int,
                  who: str = "scoreflow") -> Iterator[OpenAIServer]:
    """Load `model` (a known name or an HF-format directory), serve it on 127.0.0.1 at a free port,
    and stop the server and its engine when the block ends, however it ends."""
    engine = Engine(load_model(model), load_tokenizer(model), max_batch=max_batch, max_seq_len=max_seq_len)
    server = OpenAIServer(engine, str(model))
    try:
        server.start()
        print(f"{who}: serving {model} at {server.base_url}", file=sys.stderr, flush=True)
        yield server
    finally:
        server.stop()  # also on KeyboardInterrupt: joins the engine's thread, which would abort the exit
