"""`python -m scoreflow.serve`: an OpenAI-compatible server for a local model (+ LoRA adapter).

    python -m scoreflow.serve --model smollm2-135m-instruct --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'

The port is bound before the model loads, so a taken port fails at once, and it answers while
the model loads: GET /health says "loading" (503) until it is ready. Flags are checked first;
a mistake is one line on stderr and exit status 2. The adapter is merged into the base weights
once at start-up, so serving costs what the base model costs. SIGINT (Ctrl-C) and SIGTERM stop
it cleanly, also when it was started in the background with SIGINT ignored.
"""

from __future__ import annotations

import argparse
import errno
import signal
import threading
from pathlib import Path

from .cli import UserError, run_cli
from .engine import Engine
from .engine.engine import DRAFT_TOKENS, VERIFY_POSITIONS
from .engine.server import OpenAIServer
from .llama import DEFAULT_MODEL, load_model, load_tokenizer
from .llama.registry import resolve_model_dir
from .lora import load_adapter, merge_lora

PROG = "python -m scoreflow.serve"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what `kill` and service managers send


def main(model: str = DEFAULT_MODEL, lora: str | None = None, host: str = "127.0.0.1", port: int = 8000,
         max_batch: int = 16, max_seq_len: int = 2048, served_model_name: str | None = None,
         api_key: str | None = None, max_connections: int = 128, idle_timeout: float = 60.0,
         draft_tokens: int = DRAFT_TOKENS) -> None:
    """Bind, load the model (a known name or an HF-format directory), serve it until Ctrl-C or
    SIGTERM."""
    check_flags(port, max_batch, max_seq_len, max_connections, idle_timeout, lora)
    if draft_tokens < 0:
        raise UserError(f"--draft-tokens {draft_tokens} is negative: pass 0 (speculation off) or more")
    server = OpenAIServer(None, served_model_name or model, host, port, api_key, log_requests=True,
                          max_connections=max_connections, idle_timeout=idle_timeout)
    listen(server)
    previous = set_handlers([signal.default_int_handler] * 2)  # even when started with SIGINT ignored (`cmd &`)
    try:
        model_dir = resolve_model_dir(model)  # fast errors first: an unknown name, a directory without config.json
        print(f"scoreflow: listening on {server.base_url}; loading {model!r} (GET /health says \"loading\" "
              "until it is ready)", flush=True)
        server.attach(load_engine(model_dir, lora, max_batch, max_seq_len, draft_tokens))
        print(ready_message(server, max_batch), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        set_handlers([signal.SIG_IGN] * 2)  # a second Ctrl-C or SIGTERM does not cut the clean stop short
        server.stop()  # joins the engine's and the connections' threads: exit status 0, not an abort
        set_handlers(previous)


def set_handlers(handlers: list) -> list:
    """Give STOP_SIGNALS these handlers, in order (default_int_handler: a KeyboardInterrupt in the
    main thread); return the previous ones."""
    return [signal.signal(sig, handler) for sig, handler in zip(STOP_SIGNALS, handlers)]


def check_flags(port: int, max_batch: int, max_seq_len: int, max_connections: int, idle_timeout: float,
                lora: str | None) -> None:
    """The mistakes we can name before binding or loading anything."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is out of range: pass a number in 0-65535 (0 picks a free port)")
    if max_seq_len < 2:
        raise UserError(f"--max-seq-len {max_seq_len} is too small: a sequence needs at least one prompt and one "
                        "completion token; pass 2 or more (default 2048)")
    for flag, value in (("--max-batch", max_batch), ("--max-connections", max_connections)):
        if value < 1:
            raise UserError(f"{flag} {value} is too small: pass 1 or more")
    if not idle_timeout > 0:
        raise UserError(f"--idle-timeout {idle_timeout} must be a positive number of seconds")
    if lora is not None and not Path(lora).is_dir():
        raise UserError(f"--lora {lora!r} is not a directory: pass a PEFT adapter directory")


def listen(server: OpenAIServer) -> None:
    """Bind the port and answer on it, with a message that says what to do when it is taken."""
    try:
        server.start()
    except OSError as e:
        where = f"{server.host}:{server.port}"
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {server.port} is in use: pass --port 0 for a free port or another number") from None
        raise UserError(f"cannot listen on {where}: {e.strerror or e}; check --host and --port") from None


def load_engine(model_dir: Path, lora: str | None, max_batch: int, max_seq_len: int, draft_tokens: int) -> Engine:
    net = load_model(model_dir)
    if lora:
        merge_lora(load_adapter(net, lora))
    return Engine(net, load_tokenizer(model_dir), max_batch=max_batch, max_seq_len=max_seq_len,
                  draft_tokens=draft_tokens)


def ready_message(server: OpenAIServer, max_batch: int) -> str:
    """Where the server is and two one-liners that talk to it."""
    url, name = server.base_url, server.model_name
    key = "$API_KEY" if server.api_key else "unused"
    auth = " -H \"Authorization: Bearer $API_KEY\"" if server.api_key else ""
    return (f"scoreflow: serving {name!r} at {url} (max_batch {max_batch}, context {server.limits.context} "
            f"tokens); Ctrl-C stops. Try:\n"
            f"  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}'\n"
            f"  python -c \"from openai import OpenAI; print(OpenAI(base_url='{url}', api_key='{key}')"
            f".chat.completions.create(model='{name}', messages=[{{'role': 'user', 'content': 'Hi'}}])"
            f".choices[0].message.content)\"")


def parse_args(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"A known model name (e.g. {DEFAULT_MODEL}) or an HF-format directory with config.json.")
    ap.add_argument("--lora", help="A PEFT adapter directory, merged into the weights at start-up.")
    ap.add_argument("--host", default="127.0.0.1", help="The address to bind; 0.0.0.0 exposes the server to the "
                                                        "network.")
    ap.add_argument("--port", type=int, default=8000, help="The TCP port to listen on; 0 picks a free one.")
    ap.add_argument("--max-batch", type=int, default=16,
                    help="Sequences decoded together (KV-cache slots); also the most one request may ask for.")
    ap.add_argument("--max-seq-len", type=int, default=2048,
                    help="Prompt + completion tokens per sequence; it also caps the request body (about 1 MB at "
                         "2048).")
    ap.add_argument("--served-model-name", help="The name clients pass as `model` (default: --model).")
    ap.add_argument("--api-key", help="Require the header 'Authorization: Bearer KEY' (not for /health).")
    ap.add_argument("--max-connections", type=int, default=128,
                    help="Open connections served at once (one thread each); more get 503 with Retry-After.")
    ap.add_argument("--idle-timeout", type=float, default=60.0,
                    help="Seconds a connection may stay silent (between or inside requests) before it is closed.")
    ap.add_argument("--draft-tokens", type=int, default=DRAFT_TOKENS,
                    help="Speculative decoding: tokens drafted per sequence and step from its own text, then "
                         "verified in one forward (exact: the same output distribution); fewer as more sequences "
                         f"run, none above {VERIFY_POSITIONS // 2}; 0 turns it off (default: %(default)s).")
    return vars(ap.parse_args(argv))


if __name__ == "__main__":
    run_cli(PROG, lambda: main(**parse_args()))
