"""OpenAI-compatible HTTP server over the Engine, stdlib only.

    client --HTTP/1.1 keep-alive--> ThreadingHTTPServer (one thread per connection)
      POST /v1/chat/completions, /v1/completions
        protocol.py: check fields -> token ids + SamplingParams -> _Job: one engine.submit per prompt
        engine thread --on_update--> job queue --handler thread--> one JSON reply, or SSE
                                                                   chunks (chunked encoding)
      GET /v1/models, GET /health

While a handler waits for its job it polls its socket every 0.1 s; a client that hangs up
(EOF while waiting, a failed write while streaming) has its requests cancelled, so its cache
slots return to the batch at the next engine step.

Where the OpenAI API leaves a choice to the server: temperature defaults to 1 (OpenAI's
default, not SamplingParams'); chat max_tokens defaults to the rest of the context and legacy
completions to 16 (OpenAI's defaults); completion prompts are tokenized with the tokenizer's
special tokens (BOS where it adds one), chat prompts are the chat template's text, as in vLLM;
n > 1 may stream; choice index = prompt_index * n + sample_index. Logprobs are of the model's
raw distribution, one entry per generated token (EOS excluded), each token shown as
`decode([id])`.
"""

from __future__ import annotations

import contextlib
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .generate import Completion, Engine, TokenLogprob
from .protocol import APIError, ChatExchange, CompletionExchange, Exchange
from .sampling import SamplingParams

log = logging.getLogger(__name__)
_POLL_S = 0.1  # how often a waiting handler checks whether its client hung up
_MAX_BODY = 16 << 20
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
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, fmt: str, *args) -> None:
        if self.server.app.log_requests:
            super().log_message(fmt, *args)

    def _dispatch(self) -> None:
        app, route, self._streaming = self.server.app, (self.command, self.path.split("?", 1)[0]), False
        routes = {("GET", "/health"): lambda _: self._send_json(200, {"status": "ok"}),
                  ("GET", "/v1/models"): lambda _: self._send_json(200, app.models()),
                  ("POST", "/v1/chat/completions"): lambda b: self._complete(ChatExchange(b, app)),
                  ("POST", "/v1/completions"): lambda b: self._complete(CompletionExchange(b, app))}
        try:
            body = self._read_json() if self.command == "POST" else None
            if route not in routes:
                raise APIError(f"no such endpoint: {' '.join(route)}", code="not_found", status=404)
            if route[1] != "/health" and not app.authorized(self.headers.get("Authorization", "")):
                raise APIError("missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                               "the key the server was started with (--api-key)", code="invalid_api_key", status=401)
            routes[route](body)
        except APIError as e:
            self._send_json(e.status, e.body())
        except (_ClientGone, OSError):
            self.close_connection = True
        except Exception:
            log.exception("error while serving %s %s", *route)
            self.close_connection = True
            if not self._streaming:
                self._send_json(500, APIError("internal server error (see the server log)", status=500).body())

    do_GET = do_POST = _dispatch

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > _MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise APIError(f"a POST needs a Content-Length of at most {_MAX_BODY} bytes (chunked request "
                           "bodies are not supported)", code="invalid_length")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError("request body must be a JSON object", code="invalid_json")
        return body

    def _send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _client_gone(self) -> bool:
        """EOF on the socket (peeked, so a pipelined next request stays in place)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _complete(self, ex: Exchange) -> None:
        job = _Job(ex.engine, ex.prompts, ex.params)
        try:
            if not ex.stream:
                for _ in job.events(self._client_gone):
                    pass
                if any(c.finish_reason == "error" for _, c in job.completions()):
                    raise APIError(f"the engine failed on this request: {ex.engine.error}", code="engine_error",
                                   status=500)
                choices = [ex.choice(i, c.text, c.logprobs or [], c.finish_reason) for i, c in job.completions()]
                return self._send_json(200, ex.response(choices, job.usage()))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._streaming = True
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


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: a burst of concurrent connects is not dropped

    def __init__(self, address: tuple[str, int], app: OpenAIServer):
        super().__init__(address, _Handler)
        self.app, self.connections = app, set()


class OpenAIServer:
    """Serve `engine` under the OpenAI API as `model_name` (and start the engine's worker).

        server = OpenAIServer(engine, "smollm2-135m-instruct")
        port = server.start()          # background thread; port 0 picks a free port
        ... OpenAI(base_url=server.base_url, api_key="unused") ...
        server.stop()
    """

    def __init__(self, engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_requests: bool = False):
        self.engine, self.model_name, self.host, self.port = engine, model_name, host, port
        self.api_key, self.log_requests, self.created = api_key, log_requests, int(time.time())
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> int:
        """Bind, serve from a background thread, return the bound port."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self.engine.start()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="scoreflow-http")
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop accepting and close open connections (their unfinished requests get cancelled)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._httpd.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
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
