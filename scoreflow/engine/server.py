"""OpenAI-compatible HTTP server over the Engine, stdlib only.

    client --HTTP/1.1 keep-alive--> ThreadingHTTPServer (one thread per connection)
      POST /v1/chat/completions, /v1/completions
        check fields -> token ids + SamplingParams -> _Job: one engine.submit per prompt
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
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .generate import Completion, Engine, TokenLogprob
from .sampling import SamplingParams

log = logging.getLogger(__name__)
_POLL_S = 0.1  # how often a waiting handler checks whether its client hung up
_MAX_BODY = 16 << 20
_NUMBER = (int, float)
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_SAMPLING_FIELDS = {"model": str, "n": int, "temperature": _NUMBER, "top_p": _NUMBER, "top_k": int,
                    "max_tokens": int, "stop": (str, list), "seed": int, "stream": bool,
                    "stream_options": dict, "user": str, "presence_penalty": _NUMBER,
                    "frequency_penalty": _NUMBER, "logit_bias": dict}
# Fields clients send with their no-op defaults: accepted only with a value that changes nothing.
_INERT = {"presence_penalty": lambda v: v == 0, "frequency_penalty": lambda v: v == 0,
          "logit_bias": lambda v: not v, "response_format": lambda v: v == {"type": "text"},
          "tools": lambda v: not v, "tool_choice": lambda v: v == "none",
          "echo": lambda v: not v, "suffix": lambda v: not v}


class APIError(Exception):
    """A refused request, rendered as OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


class _ClientGone(Exception):
    """The client closed its connection."""


def _check_fields(obj: dict, fields: dict, prefix: str = "") -> dict:
    """Reject unknown fields, wrong JSON types and inert fields with an effect; drop nulls (null
    means "default" in the OpenAI API)."""
    for name, value in obj.items():
        param, types = prefix + name, fields.get(name)
        types = types if isinstance(types, tuple) else (types,)
        if types == (None,):
            raise APIError(f"unknown field {param!r}", param, "unknown_field")
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join(_JSON_TYPES[t] for t in types)
            raise APIError(f"{param} must be {want}, got {json.dumps(value)[:80]}", param, "invalid_type")
        if value is not None and name in _INERT and not _INERT[name](value):
            raise APIError(f"{param}={json.dumps(value)[:80]} is not supported here", param, "unsupported")
    return {k: v for k, v in obj.items() if v is not None}


class _Exchange:
    """One API call: checked fields -> engine prompts + SamplingParams, and how its choices render.
    Subclasses give FIELDS, `_prompts(fields) -> (token-id lists, max_tokens, logprobs)` and
    `choice(index, text, logprobs, finish_reason)` (and `chunk_choice` where a stream differs)."""

    FIELDS: dict = {}
    OBJECT = CHUNK_OBJECT = ID_PREFIX = PROMPT_FIELD = ""

    def __init__(self, body: dict, server: OpenAIServer):
        self.engine, self.tokenizer = server.engine, server.engine.tokenizer
        f = _check_fields(body, {**_SAMPLING_FIELDS, **self.FIELDS})
        self.model = f.get("model", server.model_name)
        if self.model != server.model_name:
            raise APIError(f"model {self.model!r} is not served here; this server serves "
                           f"{server.model_name!r} (GET /v1/models)", "model", "model_not_found")
        self.id, self.created = f"{self.ID_PREFIX}-{uuid.uuid4().hex}", int(time.time())
        self.stream = f.get("stream", False)
        if "stream_options" in f and not self.stream:
            raise APIError("stream_options is only allowed with stream=true", "stream_options")
        options = _check_fields(f.get("stream_options", {}), {"include_usage": bool}, "stream_options.")
        self.include_usage = options.get("include_usage", False)
        self.prompts, max_tokens, logprobs = self._prompts(f)
        ctx = self.engine.max_seq_len
        for ids in self.prompts:
            if len(ids) + (max_tokens or 1) > ctx:
                raise APIError(f"this server's context is {ctx} tokens; the prompt has {len(ids)} tokens and "
                               f"max_tokens is {max_tokens or 'unset'}: shorten the prompt or lower max_tokens",
                               self.PROMPT_FIELD, "context_length_exceeded")
        try:
            self.params = [SamplingParams(
                n=f.get("n", 1), temperature=f.get("temperature", 1.0), top_p=f.get("top_p", 1.0),
                top_k=min(f.get("top_k", 0), self.engine.model.config.vocab_size),  # no int64 overflow
                stop=f.get("stop"), seed=f.get("seed"), logprobs=logprobs,
                max_tokens=ctx - len(ids) if max_tokens is None else max_tokens) for ids in self.prompts]
        except ValueError as e:
            raise APIError(str(e)) from None
        self.logprobs_on = logprobs is not None

    def chunk_choice(self, index: int, text: str, logprobs: list[TokenLogprob], finish_reason: str | None) -> dict:
        return self.choice(index, text, logprobs, finish_reason)

    def response(self, choices: list[dict], usage: dict, chunk: bool = False) -> dict:
        return {"id": self.id, "object": self.CHUNK_OBJECT if chunk else self.OBJECT, "created": self.created,
                "model": self.model, "choices": choices, **({"usage": usage} if usage else {})}

    def token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class _ChatExchange(_Exchange):
    FIELDS = {"messages": list, "max_completion_tokens": int, "logprobs": bool, "top_logprobs": int,
              "response_format": dict, "parallel_tool_calls": bool, "store": bool, "metadata": dict,
              "tools": list, "tool_choice": (str, dict)}
    OBJECT, CHUNK_OBJECT = "chat.completion", "chat.completion.chunk"
    ID_PREFIX, PROMPT_FIELD = "chatcmpl", "messages"
    _ROLES = ("system", "user", "assistant")

    def __init__(self, body: dict, server: OpenAIServer):
        self._started: set[int] = set()  # stream: choices whose first delta (with the role) went out
        super().__init__(body, server)

    def _prompts(self, f: dict) -> tuple[list[list[int]], int | None, int | None]:
        if not f.get("messages"):
            raise APIError("messages must be a non-empty array of messages", "messages")
        turns = []
        for i, m in enumerate(f["messages"]):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise APIError(f"{where} must be a message object", where, "invalid_type")
            m = _check_fields(m, {"role": str, "content": (str, list), "name": str}, where + ".")
            if m.get("role") not in self._ROLES:
                raise APIError(f"{where}.role must be one of {', '.join(self._ROLES)}", where + ".role")
            content = m.get("content")
            if content is None:
                raise APIError(f"{where}.content is missing", where + ".content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise APIError(f"{where}.content: only text parts are supported", where + ".content")
                content = "\n".join(p["text"] for p in content)
            turns.append({"role": m["role"], "content": content})
        if "top_logprobs" in f and not f.get("logprobs"):
            raise APIError("top_logprobs requires logprobs=true", "top_logprobs")
        try:
            ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(turns))
        except ValueError as e:
            raise APIError(str(e), "messages") from None
        return ([ids], f.get("max_completion_tokens", f.get("max_tokens")),
                f.get("top_logprobs", 0) if f.get("logprobs") else None)

    def _logprobs(self, entries: list[TokenLogprob]) -> dict | None:
        def item(token_id: int, logprob: float) -> dict:
            s = self.token(token_id)
            return {"token": s, "logprob": logprob, "bytes": list(s.encode())}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(*t) for t in e.top]}
                            for e in entries]} if self.logprobs_on else None

    def choice(self, index, text, logprobs, finish_reason):
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": self._logprobs(logprobs), "finish_reason": finish_reason}

    def chunk_choice(self, index, text, logprobs, finish_reason):
        first, delta = index not in self._started, {"content": text} if text else {}
        self._started.add(index)
        delta = {"role": "assistant", "content": text} if first else delta
        return {"index": index, "delta": delta, "logprobs": self._logprobs(logprobs), "finish_reason": finish_reason}


class _CompletionExchange(_Exchange):
    FIELDS = {"prompt": (str, list), "logprobs": int, "echo": bool, "suffix": str}
    OBJECT = CHUNK_OBJECT = "text_completion"
    ID_PREFIX, PROMPT_FIELD = "cmpl", "prompt"

    def __init__(self, body: dict, server: OpenAIServer):
        self._offsets: defaultdict[int, int] = defaultdict(int)  # text_offset reached per choice
        super().__init__(body, server)

    def _prompts(self, f: dict) -> tuple[list[list[int]], int | None, int | None]:
        prompt = f.get("prompt")
        is_ids = lambda p: isinstance(p, list) and all(type(t) is int for t in p)  # noqa: E731
        prompt = [prompt] if isinstance(prompt, str) or is_ids(prompt) else prompt
        if not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
            raise APIError("prompt is required: a string, an array of strings, an array of token ids or an "
                           "array of token-id arrays", "prompt", "invalid_type")
        prompts = [self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in prompt]
        vocab = self.engine.model.config.vocab_size
        if not all(ids and all(0 <= t < vocab for t in ids) for ids in prompts):
            raise APIError(f"every prompt needs at least one token, and token ids in [0, {vocab})", "prompt")
        return prompts, f.get("max_tokens", 16), f.get("logprobs")

    def choice(self, index, text, logprobs, finish_reason):
        """Legacy logprobs layout; text_offset counts characters from the start of the completion."""
        body = None
        if self.logprobs_on:
            tokens, offsets = [self.token(e.token_id) for e in logprobs], []
            for s in tokens:
                offsets.append(self._offsets[index])
                self._offsets[index] += len(s)
            body = {"tokens": tokens, "token_logprobs": [e.logprob for e in logprobs], "text_offset": offsets,
                    "top_logprobs": [{self.token(t): lp for t, lp in e.top} for e in logprobs]}
        return {"index": index, "text": text, "logprobs": body, "finish_reason": finish_reason}


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
                  ("POST", "/v1/chat/completions"): lambda b: self._complete(_ChatExchange(b, app)),
                  ("POST", "/v1/completions"): lambda b: self._complete(_CompletionExchange(b, app))}
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

    def _complete(self, ex: _Exchange) -> None:
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
