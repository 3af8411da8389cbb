"""A real loopback HTTP server speaking the OpenAI chat-completions API, with scripted faults:
the endpoint that the tests and benchmarks of code calling an OpenAI-compatible server talk to.

    from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer(delay_s=0.01) as server:          # free port on 127.0.0.1
        server.script(Reply(status=429, headers={"Retry-After": "1"}), Reply())
        ... client(base_url=server.base_url) ...
        server.request_count, server.max_in_flight, server.requests[0].body

Requests take scripted replies in arrival order; once the script is used up every request
gets the default reply: a completion whose text echoes the last message ("echo: <content>",
one choice per requested n) with fixed usage, or on the legacy /v1/completions route the
prompt ("echo: <prompt>"). Unknown paths get a real 404.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class Reply:
    """What the server does with one request. body: dict/list -> JSON, str/bytes -> sent as
    is, None -> the default completion."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0   # stall this long before answering (0: the server's delay_s)
    drop: bool = False     # close the connection without sending anything


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]   # names lower-cased
    body: Any          # parsed JSON, or the raw bytes when not JSON
    arrived: float     # time.monotonic() at arrival


def completion(*texts: str, prompt_tokens: int = 10, completion_tokens: int = 5,
               finish_reason: str = "stop") -> dict:
    """A chat-completion object with one choice per text."""
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish_reason}
               for i, t in enumerate(texts)]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


def text_completion(*texts: str, prompt_tokens: int = 10, completion_tokens: int = 5,
                    finish_reason: str = "stop") -> dict:
    """A legacy text-completion object with one choice per text."""
    choices = [{"index": i, "text": t, "finish_reason": finish_reason} for i, t in enumerate(texts)]
    return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "fake",
            "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class FakeOpenAIServer:
    """delay_s: latency of every reply (lets concurrency show at the server); prompt_tokens,
    completion_tokens: the usage every default reply reports."""

    def __init__(self, delay_s: float = 0.0, prompt_tokens: int = 10, completion_tokens: int = 5):
        self.delay_s, self.prompt_tokens, self.completion_tokens = delay_s, prompt_tokens, completion_tokens
        self.requests: list[Request] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        with self._lock:
            headers = {name.lower(): value for name, value in handler.headers.items()}
            self.requests.append(Request(handler.path, headers, body, time.monotonic()))
            reply = self._script.popleft() if self._script else None
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            reply = self._complete(reply, handler.path, body)
            time.sleep(reply.delay_s or self.delay_s)
            if reply.drop:
                handler.close_connection = True
                return
            _send(handler, reply)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _complete(self, reply: Reply | None, path: str, body: Any) -> Reply:
        """The scripted reply with its body filled in, or the default reply."""
        if reply is None:
            return self._default_reply(path, body)
        if reply.body is None and reply.status != 200:
            return replace(reply, body=_error(f"scripted HTTP {reply.status}"))
        if reply.body is None:
            return replace(reply, body=self._default_reply(path, body).body)
        return reply

    def _default_reply(self, path: str, body: Any) -> Reply:
        if path == COMPLETIONS_PATH and isinstance(body, dict) and isinstance(body.get("prompt"), str):
            texts = [f"echo: {body['prompt']}"] * int(body.get("n") or 1)
            return Reply(body=text_completion(*texts, prompt_tokens=self.prompt_tokens,
                                              completion_tokens=self.completion_tokens))
        if path != CHAT_PATH:
            return Reply(404, _error(f"no route {path}"))
        if not isinstance(body, dict) or not body.get("messages"):
            return Reply(400, _error("expected a JSON body with messages"))
        last = body["messages"][-1]["content"]
        texts = [f"echo: {last}"] * int(body.get("n") or 1)
        return Reply(body=completion(*texts, prompt_tokens=self.prompt_tokens,
                                     completion_tokens=self.completion_tokens))


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    body = reply.body
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    handler.send_response(reply.status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in reply.headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real API servers

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.owner._handle(self)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default 5 drops SYNs of concurrent clients: 1 s retransmit stalls

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here, not a test failure
