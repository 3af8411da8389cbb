"""OpenAI-compatible HTTP server over the Engine, stdlib only.

    client --HTTP/1.1 keep-alive--> BoundedHTTPServer (bounded_http.py: one thread per connection,
                                    at most max_connections, then 503; idle_timeout per socket)
      POST /v1/chat/completions, /v1/completions
        body (at most Limits.max_body bytes, else 413) -> protocol.py: check fields and lengths
        -> token ids + SamplingParams -> _Job: one engine.submit per prompt
        engine thread --on_update--> job queue --handler thread--> one JSON reply, or SSE
                                                                   chunks (chunked encoding)
      GET /v1/models, GET /health ("loading" with 503 until an engine is attached)
      any other method: 405; every error is an OpenAI error body in JSON

While a handler waits for its job it polls its socket every 0.1 s; a client that hangs up has
its requests cancelled, so its cache slots return to the batch at the next engine step. EOF
alone does not count: a client may half-close after sending its request and still read the
reply (`_Handler._client_gone`).

Where the OpenAI API leaves a choice to the server: temperature defaults to 1 (OpenAI's
default, not SamplingParams'), and below sampling.GREEDY_BELOW is greedy; chat max_tokens
defaults to the rest of the context and legacy completions to 16 (OpenAI's defaults);
completion prompts are tokenized with the tokenizer's special tokens (BOS where it adds one),
chat prompts are the chat template's text, as in vLLM; role developer is system; n > 1 may
stream; choice index = prompt_index * n + sample_index; one request asks for at most the
engine's batch of sequences (prompts x n). Logprobs are of the model's raw distribution, one
entry per generated token (EOS excluded), each token shown as `decode([id])`.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from .bounded_http import BoundedHTTPServer
from .engine import Completion, Engine, TokenLogprob
from .protocol import APIError, ChatExchange, CompletionExchange, Exchange, Limits, parse_body
from .sampling import SamplingParams

log = logging.getLogger(__name__)
_POLL_S = 0.1  # how often a waiting handler checks whether its client hung up
STOP_POLL_S = 0.05  # how often the accept loop checks for stop() (the standard library's 0.5 s made stop slow)
_DRAIN_MAX = 32 << 20  # refused bodies up to this size are read and dropped, keeping the connection
_RETRY = {"Retry-After": "1"}


class _ClientGone(Exception):
    """The client closed its connection."""


class _Job:
    """The engine requests behind one API call (one per prompt), their updates merged into one
    stream of (choice index, new text, new logprob entries, finish_reason or None)."""

    def __init__(self, engine: Engine, prompts: list[list[int]], params: list[SamplingParams]):
        self.engine, self.n, self.requests = engine, params[0].n, []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        try:
            for p, (ids, sp) in enumerate(zip(prompts, params)):
                self.requests.append(engine.submit(ids, sp, on_update=self._reporter(p)))
        except ValueError as e:
            self.cancel()
            raise APIError(str(e)) from None

    def _reporter(self, p: int) -> Callable:
        def on_update(seq, text):  # on the engine thread: (p, sample, text, #logprobs); (p, None, ...) at the end
            j = None if seq is None else next(j for j, s in enumerate(seq.request.seqs) if s is seq)
            self._queue.put((p, j, text, 0 if seq is None else len(seq.logprobs)))
        return on_update

    def events(self, client_gone: Callable[[], bool]) -> Iterator[tuple[int, str, list[TokenLogprob], str | None]]:
        """Yield updates until every request has ended; raise _ClientGone once the client hangs up."""
        pending, next_check, sent = len(self.requests), time.monotonic() + _POLL_S, defaultdict(int)
        while pending:
            try:
                p, j, text, n_logprobs = self._queue.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                p = None
            if time.monotonic() >= next_check:
                if client_gone():
                    raise _ClientGone
                next_check = time.monotonic() + _POLL_S
            if p is None:
                continue
            seqs = self.requests[p].seqs
            for j, seq in enumerate(seqs) if j is None else [(j, seqs[j])]:
                i, end = p * self.n + j, len(seq.logprobs) if text is None else n_logprobs
                entries, sent[i] = seq.logprobs[sent[i]:end], end
                yield i, text or "", entries, seq.finish_reason if text is None else None
            pending -= text is None

    def completions(self) -> list[tuple[int, Completion]]:
        return [(p * self.n + j, c) for p, r in enumerate(self.requests) for j, c in enumerate(r.completions())]

    def usage(self) -> dict:
        prompt = sum(len(r.prompt_ids) for r in self.requests)
        completion = sum(len(c.token_ids) for _, c in self.completions())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def cancel(self) -> None:
        """Free the slots of every unfinished request (no-op once all are done)."""
        for r in self.requests:
            if not r.done.is_set():
                self.engine.cancel(r)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = "scoreflow"
    server: _HTTPServer

    def __getattr__(self, name: str):
        """Every HTTP method reaches _dispatch, which answers 405 where the stdlib sends an HTML 501."""
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, fmt: str, *args) -> None:
        if self.server.app.log_requests:
            super().log_message(fmt, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (a malformed request line or header, a URI too long...) as
        OpenAI JSON, not HTML, after a status line even where the request line was too garbled
        to name a version (the stdlib then answers in HTTP/0.9: a body alone)."""
        self.close_connection, self.request_version = True, self.protocol_version
        self._send_json(code, APIError(message or HTTPStatus(code).phrase, status=code).body())

    def _dispatch(self) -> None:
        self._body_unread, self._replied, self._probed = True, False, False
        try:
            try:
                self._route(self.command, self.path.split("?", 1)[0])
            except APIError as e:
                self._skip_body()
                self._send_json(e.status, e.body(), e.headers)
        except (_ClientGone, OSError):  # OSError: a timeout or a reset while reading or writing
            self.close_connection = True
        except Exception:
            log.exception("error while serving %s %s", self.command, self.path)
            self.close_connection = True
            if not self._replied:
                self._send_json(500, APIError("internal server error (see the server log)", status=500).body())

    def _route(self, method: str, path: str) -> None:
        routes = {"GET": {"/health": self._health, "/v1/models": self._models},
                  "POST": {"/v1/chat/completions": lambda: self._complete(ChatExchange),
                           "/v1/completions": lambda: self._complete(CompletionExchange)}}
        if method not in routes:
            raise APIError(f"method {method} is not allowed: this server answers GET and POST",
                           code="method_not_allowed", status=405, headers={"Allow": "GET, POST"})
        if path not in routes[method]:
            raise APIError(f"no such endpoint: {method} {path}", code="not_found", status=404)
        if path != "/health" and not self.server.app.authorized(self.headers.get("Authorization", "")):
            raise APIError("missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                           "the key the server was started with (--api-key)", code="invalid_api_key", status=401)
        routes[method][path]()

    def _health(self) -> None:
        self._skip_body()
        ready = self.server.app.limits is not None
        self._send_json(200 if ready else 503, {"status": "ok" if ready else "loading"}, None if ready else _RETRY)

    def _models(self) -> None:
        self._skip_body()
        self._send_json(200, self.server.app.models())

    def _read_body(self, max_body: int) -> bytes:
        length = self._content_length()
        if length is None:
            raise APIError("a POST needs a Content-Length header (chunked request bodies are not supported)",
                           code="invalid_length", status=411)
        if length > max_body:
            raise APIError(f"request body is {length} bytes; this server takes at most {max_body} (what its "
                           "context window can need): shorten the prompt", code="request_too_large", status=413)
        raw, self._body_unread = self.rfile.read(length), False
        if len(raw) < length:
            raise _ClientGone
        return raw

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length", "")
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 15 else None

    def _skip_body(self) -> None:
        """Read and drop a body we will not parse, so that the connection stays usable and the
        client reads our answer (closing a socket with unread bytes sends a reset, which can
        destroy the reply). One we cannot delimit, or larger than _DRAIN_MAX, closes it."""
        if not self._body_unread:
            return
        self._body_unread, length = False, self._content_length()
        undelimited = "Transfer-Encoding" in self.headers or (length is None and "Content-Length" in self.headers)
        remaining = length or 0
        if undelimited or remaining > _DRAIN_MAX:
            self.close_connection = True
            return
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                raise _ClientGone
            remaining -= len(chunk)

    def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._replied = True
        if self.command != "HEAD":
            self.wfile.write(data)

    def _client_gone(self) -> bool:
        """Whether the client hung up. EOF alone may be a half-close (the client shut its sending
        side and still reads), so until the reply starts an interim "100 Continue", which HTTP/1.1
        clients skip, probes it (once it has started, every write does): a closed peer answers
        with a reset, which SO_ERROR then reports. A pipelined next request is only peeked at."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable or sock.recv(1, socket.MSG_PEEK):
                return False
            if not (self._replied or self._probed):
                if self.request_version != "HTTP/1.1":  # no interim replies to HTTP/1.0: EOF is a hang-up
                    return True
                self._probed = True
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        except OSError:
            return True

    def _complete(self, exchange: type[Exchange]) -> None:
        app = self.server.app
        if app.limits is None:
            raise APIError("the model is still loading: retry in a moment (GET /health says when it is ready)",
                           code="model_loading", status=503, headers=_RETRY)
        ex = exchange(parse_body(self._read_body(app.limits.max_body)), app)
        job = _Job(ex.engine, ex.prompts, ex.params)
        try:
            if not ex.stream:
                for _ in job.events(self._client_gone):
                    pass
                if any(c.finish_reason == "error" for _, c in job.completions()):
                    cause = (ex.engine.error or "unknown").strip().splitlines()[-1]  # the exception's line
                    raise APIError(f"the engine failed on this request: {cause}", code="engine_error", status=500)
                choices = [ex.choice(i, c.text, c.logprobs or [], c.finish_reason) for i, c in job.completions()]
                return self._send_json(200, ex.response(choices, job.usage()))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._replied = True
            for i, text, logprobs, finish_reason in job.events(self._client_gone):
                self._write_event(ex.response([ex.chunk_choice(i, text, logprobs, finish_reason)], None, chunk=True))
            if ex.include_usage:
                self._write_event(ex.response([], job.usage(), chunk=True))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")  # the last chunk of the HTTP body
        finally:
            job.cancel()

    def _write_event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError:
            raise _ClientGone from None


class _HTTPServer(BoundedHTTPServer):
    def __init__(self, app: OpenAIServer):
        busy = APIError(f"server busy: all {app.max_connections} connections are in use; retry in a moment",
                        code="server_busy", status=503).body()
        super().__init__((app.host, app.port), _Handler, app.max_connections, app.idle_timeout,
                         json.dumps(busy).encode())
        self.app = app


class OpenAIServer:
    """Serve `engine` under the OpenAI API as `model_name` (and start the engine's worker).

        server = OpenAIServer(engine, "smollm2-135m-instruct")
        port = server.start()          # background thread; port 0 picks a free port
        ... OpenAI(base_url=server.base_url, api_key="unused") ...
        server.stop()

    With engine=None the port is bound and answers at once: /health says "loading" and
    completions get 503 + Retry-After until `attach(engine)`. At most `max_connections` are
    open at a time (more get 503 + Retry-After); one idle for `idle_timeout` s is closed.
    """

    def __init__(self, engine: Engine | None, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_requests: bool = False, max_connections: int = 128,
                 idle_timeout: float = 60.0):
        self.engine, self.model_name, self.host, self.port = engine, model_name, host, port
        self.api_key, self.log_requests, self.created = api_key, log_requests, int(time.time())
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.limits: Limits | None = None  # set once the engine serves: the server is ready
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> int:
        """Bind, serve from a background thread, return the bound port."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer(self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(STOP_POLL_S,), daemon=True,
                                        name="scoreflow-http")
        self._thread.start()
        if self.engine is not None:
            self.attach(self.engine)
        return self.port

    def attach(self, engine: Engine) -> None:
        """Start the engine and answer completions with it."""
        limits = Limits.of(engine)
        engine.start()
        self.engine = engine
        self.limits = limits  # last: handlers read a set `limits` as "ready"

    def stop(self) -> None:
        """Stop accepting and close open connections (their unfinished requests get cancelled)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def authorized(self, header: str) -> bool:
        return self.api_key is None or hmac.compare_digest(header.encode(), f"Bearer {self.api_key}".encode())

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "scoreflow"}]}
