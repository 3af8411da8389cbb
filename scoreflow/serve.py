"""`python -m scoreflow.serve`: an OpenAI-compatible server for a local model (+ LoRA adapter).

    python -m scoreflow.serve --model smollm2-135m-instruct --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'

The adapter is merged into the base weights once at start-up, so serving costs what the base
model costs.
"""

from __future__ import annotations

import argparse
import threading

from .engine import Engine
from .engine.server import OpenAIServer
from .llama import DEFAULT_MODEL, load_model, load_tokenizer
from .lora import load_adapter, merge_lora


def main(model: str = DEFAULT_MODEL, lora: str | None = None, host: str = "127.0.0.1", port: int = 8000,
         max_batch: int = 16, max_seq_len: int = 2048, served_model_name: str | None = None,
         api_key: str | None = None) -> None:
    """Load the model (a known name or an HF-format directory), serve it until Ctrl-C."""
    net = load_model(model)
    if lora:
        merge_lora(load_adapter(net, lora))
    engine = Engine(net, load_tokenizer(model), max_batch=max_batch, max_seq_len=max_seq_len)
    server = OpenAIServer(engine, served_model_name or model, host, port, api_key, log_requests=True)
    server.start()
    print(f"scoreflow: serving {server.model_name!r} at {server.base_url} "
          f"(max_batch {max_batch}, context {engine.max_seq_len} tokens); Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="known model name or HF-format directory")
    ap.add_argument("--lora", help="PEFT adapter directory, merged into the weights")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV-cache slots)")
    ap.add_argument("--max-seq-len", type=int, default=2048, help="prompt + completion tokens per sequence")
    ap.add_argument("--served-model-name", help="the name clients pass as `model` (default: --model)")
    ap.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    main(**vars(ap.parse_args()))
