"""OpenAI-compatible HTTP server over the Engine, stdlib only.

    client --HTTP/1.1 keep-alive--> BoundedHTTPServer (bounded_http.py: one thread per connection,
                                    at most max_connections, then 503; idle_timeout per socket;
                                    header_timeout per request head, then 408)
      framing: Content-Length only, one, plain digits; Transfer-Encoding or any doubt is 4xx/501
               and the connection closes (what follows could be a smuggled request)
      POST /v1/chat/completions, /v1/completions
        body (at most Limits.max_body bytes, else 413) -> protocol.py: check fields and lengths
        -> token ids + SamplingParams -> _Job: one engine.submit per prompt
        engine thread --on_update--> job queue --handler thread--> one JSON reply, or SSE
                                                                   chunks (chunked encoding;
                                                                   HTTP/1.0: close-delimited)
      GET /v1/models, GET /health ("loading" with 503 until an engine is attached)
      any other method: 405; every error is an OpenAI error body in JSON
    stop(): no new connections; the engine stops (requests in flight get 503, or an error event
            in a stream); open connections get STOP_GRACE_S to finish, then close; threads joined

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

import contextlib
import hmac
import json
import logging
import queue
import re
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from .bounded_http import BoundedHTTPServer, HeadTimeout, check_bounds
from .engine import Completion, Engine, TokenLogprob
from .protocol import APIError, ChatExchange, CompletionExchange, Exchange, Limits, parse_body
from .sampling import SamplingParams

log = logging.getLogger(__name__)
_POLL_S = 0.1  # how often a waiting handler checks whether its client hung up
STOP_POLL_S = 0.05  # how often the accept loop checks for stop() (the standard library's 0.5 s made stop slow)
_DRAIN_MAX = 32 << 20  # refused bodies up to this size are read and dropped, keeping the connection
_RETRY = {"Retry-After": "1"}
_LENGTH = re.compile(r"[0-9]{1,15}")  # a Content-Length we read: plain digits, no sign, space or hex
STOP_GRACE_S = 2.0  # how long stop() lets open connections finish their replies, twice over
HEADER_TIMEOUT_S = 10.0  # the default time a request head may take from its first byte


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

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader: ours times the request head (bounded_http.HeadClock)
        self.rfile = self.server.reader(self.connection)
        self._clock = self.rfile.raw

    def handle_one_request(self) -> None:
        """The stdlib's, with the request head under the header deadline: 408 and close past it."""
        self._clock.start_head()
        self.requestline = self.command = ""  # what the log shows should the request line not arrive
        try:
            super().handle_one_request()
        except HeadTimeout:
            self._clock.end_head()
            with contextlib.suppress(OSError):
                self.send_error(408, f"the request head took more than {self.server.header_timeout:g} s from its "
                                     "first byte: send the request line and headers at once")

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
        self._clock.end_head()
        self._body_unread, self._replied, self._probed = True, False, False
        try:
            try:
                self._length = self._framing()
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

    def _framing(self) -> int | None:
        """The body's length (None: no body). A request whose framing we doubt is refused and its
        connection closed: where its body ends, and so where a next request starts, is unknown."""
        try:
            return body_length(self.headers)
        except APIError:
            self.close_connection, self._body_unread = True, False
            raise

    def _read_body(self, max_body: int) -> bytes:
        length = self._length
        if length is None:
            raise APIError("a POST needs a Content-Length header", code="invalid_length", status=411)
        if length > max_body:
            raise APIError(f"request body is {length} bytes; this server takes at most {max_body} (what its "
                           "context window can need): shorten the prompt", code="request_too_large", status=413)
        raw, self._body_unread = self.rfile.read(length), False
        if len(raw) < length:
            raise _ClientGone
        return raw

    def _skip_body(self) -> None:
        """Read and drop a body we will not parse, so that the connection stays usable. One larger
        than _DRAIN_MAX closes it (bounded_http drains it while the client reads our answer)."""
        if not self._body_unread:
            return
        self._body_unread, remaining = False, self._length or 0
        if remaining > _DRAIN_MAX:
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
        with a reset, which SO_ERROR then reports. A pipelined next request is only peeked at.
        Also True once the server stops waiting for its requests."""
        sock = self.connection
        if self.server.closing:  # stop() gave up waiting for this request
            return True
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
            self._stream(ex, job) if ex.stream else self._reply(ex, job)
        finally:
            job.cancel()

    def _reply(self, ex: Exchange, job: _Job) -> None:
        for _ in job.events(self._client_gone):
            pass
        reasons = {c.finish_reason for _, c in job.completions()}
        if "cancelled" in reasons:  # only the engine's stop() ends a request of a connected client
            self.close_connection = True
            raise _shutting_down()
        if "error" in reasons:
            cause = (ex.engine.error or "unknown").strip().splitlines()[-1]  # the exception's line
            raise APIError(f"the engine failed on this request: {cause}", code="engine_error", status=500)
        choices = [ex.choice(i, c.text, c.logprobs or [], c.finish_reason) for i, c in job.completions()]
        self._send_json(200, ex.response(choices, job.usage()))

    def _stream(self, ex: Exchange, job: _Job) -> None:
        """Server-sent events, in chunks; to an HTTP/1.0 client (no chunked encoding there) the
        body ends where the connection does."""
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self._replied = True
        for i, text, logprobs, finish_reason in job.events(self._client_gone):
            if finish_reason == "cancelled":  # the server stops: an error event, as OpenAI's streams end in one
                self._write_event(_shutting_down().body())
                return self._write_part(b"")
            self._write_event(ex.response([ex.chunk_choice(i, text, logprobs, finish_reason)], None, chunk=True))
        if ex.include_usage:
            self._write_event(ex.response([], job.usage(), chunk=True))
        self._write_part(b"data: [DONE]\n\n")
        self._write_part(b"")  # the end of the HTTP body

    def _write_event(self, obj: dict) -> None:
        self._write_part(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_part(self, data: bytes) -> None:
        """Part of a streamed body (b"": its end): a chunk, or the bytes themselves close-delimited."""
        try:
            if self._chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            elif data:
                self.wfile.write(data)
        except OSError:
            raise _ClientGone from None


def body_length(headers: Message) -> int | None:
    """A request body's length from its framing headers (None: no body), or APIError for framing
    this server refuses: Transfer-Encoding (chunked request bodies are not supported; with
    Content-Length too it is the classic smuggling pair), several Content-Length headers, one that
    is not plain digits, or header lines that did not parse (the parser then drops the rest)."""
    codings, lengths = headers.get_all("Transfer-Encoding", []), headers.get_all("Content-Length", [])
    if headers.defects:
        raise APIError("the request has a malformed header line", code="invalid_header")
    if codings and lengths:
        raise APIError("a request may not have both Transfer-Encoding and Content-Length", code="invalid_framing")
    if codings:
        chunked = [c.strip().lower() for c in codings] == ["chunked"]
        raise APIError("chunked request bodies are not supported: send a Content-Length header" if chunked else
                       f"Transfer-Encoding {', '.join(codings)[:60]!r} is not supported: send a Content-Length header",
                       code="invalid_length" if chunked else "unsupported_transfer_encoding",
                       status=411 if chunked else 501)
    if len(lengths) > 1:
        raise APIError(f"a request may have one Content-Length header, not {len(lengths)}", code="invalid_framing")
    if lengths and not _LENGTH.fullmatch(lengths[0].strip(" \t")):
        raise APIError(f"Content-Length {lengths[0][:40]!r} is not a length: pass the body's size in bytes as plain "
                       "digits", code="invalid_framing")
    return int(lengths[0]) if lengths else None


def _shutting_down() -> APIError:
    return APIError("the server is shutting down: retry with another server or once it is back",
                    code="server_shutting_down", status=503, headers=_RETRY)


class _HTTPServer(BoundedHTTPServer):
    def __init__(self, app: OpenAIServer):
        busy = APIError(f"server busy: all {app.max_connections} connections are in use; retry in a moment",
                        code="server_busy", status=503).body()
        super().__init__((app.host, app.port), _Handler, app.max_connections, app.idle_timeout, app.header_timeout,
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
    open at a time (more get 503 + Retry-After); one idle for `idle_timeout` s is closed, and
    one whose request head takes more than `header_timeout` s from its first byte gets 408
    (ValueError for a bound outside bounded_http.check_bounds: 1 to 4096 connections, timeouts
    in (0, 1 day]).
    """

    def __init__(self, engine: Engine | None, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_requests: bool = False, max_connections: int = 128,
                 idle_timeout: float = 60.0, header_timeout: float = HEADER_TIMEOUT_S):
        check_bounds(max_connections, idle_timeout, header_timeout)
        self.engine, self.model_name, self.host, self.port = engine, model_name, host, port
        self.api_key, self.log_requests, self.created = api_key, log_requests, int(time.time())
        self.max_connections, self.idle_timeout, self.header_timeout = max_connections, idle_timeout, header_timeout
        self.limits: Limits | None = None  # set once the engine serves: the server is ready
        self._started: Engine | None = None  # the engine this server started (and stops)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> int:
        """Bind, serve from a background thread, return the bound port."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        httpd = _HTTPServer(self)
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, args=(STOP_POLL_S,), daemon=True,
                                        name="scoreflow-http")
        self._thread.start()
        self._httpd = httpd  # only now: stop() waits for serve_forever, which must be running
        if self.engine is not None:
            self.attach(self.engine)
        return self.port

    def attach(self, engine: Engine) -> None:
        """Start the engine and answer completions with it."""
        limits = Limits.of(engine)
        self.engine = self._started = engine  # before start(): a stop() from here on stops it
        engine.start()
        self.limits = limits  # last: handlers read a set `limits` as "ready"

    def stop(self) -> None:
        """Stop accepting; stop the engine (the requests in flight end: 503, or an error event in a
        stream) and join its thread; let open connections finish their replies for up to
        STOP_GRACE_S, then close them (what is still unfinished is cancelled) and join their
        threads."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        if self._started is not None:
            self._started.stop()
            self._started = None
        self._httpd.close_connections(STOP_GRACE_S)
        self._httpd.server_close()
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
