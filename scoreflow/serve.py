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

import errno
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from .cli import Bounds, Parser, UserError, add_flags, check_settings, flag, given, run_cli
from .engine import Engine
from .engine.bounded_http import MAX_CONNECTIONS, MAX_TIMEOUT_S
from .engine.engine import DRAFT_TOKENS, MAX_BATCH, VERIFY_POSITIONS
from .engine.sampling_ranges import MAX_TOKENS
from .engine.server import HEADER_TIMEOUT_S, OpenAIServer
from .llama import DEFAULT_MODEL, load_model, load_tokenizer
from .llama.registry import resolve_model_dir
from .lora import load_adapter, merge_lora

PROG = "python -m scoreflow.serve"
TIMEOUT = Bounds(0, MAX_TIMEOUT_S, low_open=True)  # seconds, as the server takes them
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what `kill` and service managers send


@dataclass(frozen=True)
class ServeSettings:
    """Every flag of `python -m scoreflow.serve`, each number within its range (cli.check_settings)."""

    model: str = flag(DEFAULT_MODEL, f"A known model name (e.g. {DEFAULT_MODEL}) or an HF-format directory with "
                                     "config.json.")
    lora: str | None = flag(None, "A PEFT adapter directory, merged into the weights at start-up.")
    host: str = flag("127.0.0.1", "The address to bind; 0.0.0.0 exposes the server to the network.")
    port: int = flag(8000, "The TCP port to listen on; 0 picks a free one.", bounds=(0, 65535))
    max_batch: int = flag(16, "Sequences decoded together (KV-cache slots); also the most one request may ask for.",
                          bounds=(1, MAX_BATCH))
    max_seq_len: int = flag(2048, "Prompt + completion tokens per sequence; it also caps the request body (about "
                                  "1 MB at 2048).", bounds=(2, MAX_TOKENS.high))
    served_model_name: str | None = flag(None, "The name clients pass as `model` (default: --model).")
    api_key: str | None = flag(None, "Require the header 'Authorization: Bearer KEY' (not for /health).",
                               compare=False, repr=False)
    max_connections: int = flag(128, "Open connections served at once (one thread each); more get 503 with "
                                     "Retry-After.", bounds=(1, MAX_CONNECTIONS))
    idle_timeout: float = flag(60.0, "Seconds a connection may stay silent (between or inside requests) before it "
                                     "is closed.", bounds=TIMEOUT)
    header_timeout: float = flag(HEADER_TIMEOUT_S, "Seconds a request's line and headers may take from their first "
                                                   "byte; a slower client gets 408.", bounds=TIMEOUT)
    draft_tokens: int = flag(DRAFT_TOKENS, "Speculative decoding: tokens drafted per sequence and step from its own "
                                           "text, then verified in one forward (exact: the same output "
                                           "distribution); fewer as more sequences run, none above "
                                           f"{VERIFY_POSITIONS // 2}; 0 turns it off.",
                             bounds=(0, VERIFY_POSITIONS - 1))

    def __post_init__(self) -> None:
        check_settings(self)


def main(settings: ServeSettings) -> None:
    """Bind, load the model (a known name or an HF-format directory), serve it until Ctrl-C or
    SIGTERM."""
    if settings.lora is not None and not Path(settings.lora).is_dir():
        raise UserError(f"--lora {settings.lora!r} is not a directory: pass a PEFT adapter directory")
    server = OpenAIServer(None, settings.served_model_name or settings.model, settings.host, settings.port,
                          settings.api_key, log_requests=True, max_connections=settings.max_connections,
                          idle_timeout=settings.idle_timeout, header_timeout=settings.header_timeout)
    listen(server)
    previous = set_handlers([signal.default_int_handler] * 2)  # even when started with SIGINT ignored (`cmd &`)
    try:
        model_dir = resolve_model_dir(settings.model)  # fast errors first: an unknown name, no config.json
        print(f"scoreflow: listening on {server.base_url}; loading {settings.model!r} (GET /health says "
              "\"loading\" until it is ready)", flush=True)
        server.attach(load_engine(model_dir, settings))
        print(ready_message(server, settings.max_batch), flush=True)
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


def listen(server: OpenAIServer) -> None:
    """Bind the port and answer on it, with a message that says what to do when it is taken."""
    try:
        server.start()
    except OSError as e:
        where = f"{server.host}:{server.port}"
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {server.port} is in use: pass --port 0 for a free port or another number") from None
        raise UserError(f"cannot listen on {where}: {e.strerror or e}; check --host and --port") from None


def load_engine(model_dir: Path, settings: ServeSettings) -> Engine:
    net = load_model(model_dir)
    if settings.lora:
        merge_lora(load_adapter(net, settings.lora))
    return Engine(net, load_tokenizer(model_dir), max_batch=settings.max_batch, max_seq_len=settings.max_seq_len,
                  draft_tokens=settings.draft_tokens)


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


def parse_args(argv: list[str] | None = None) -> ServeSettings:
    parser = Parser(prog=PROG, description=__doc__.split("\n")[0])
    add_flags(parser, ServeSettings)
    return ServeSettings(**given(vars(parser.parse_args(argv)), ServeSettings))


if __name__ == "__main__":
    run_cli("scoreflow.serve", lambda: main(parse_args()))
