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
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object"}
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
    """A request the server refuses; rendered as OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


class _ClientGone(Exception):
    pass


def _check_fields(obj: dict, fields: dict, prefix: str = "") -> dict:
    """Reject unknown fields, wrong JSON types and non-default inert fields; drop nulls (null
    means "default" in the OpenAI API)."""
    for name, value in obj.items():
        param = prefix + name
        if name not in fields:
            raise APIError(f"unknown field {param!r}", param, "unknown_field")
        types = fields[name] if isinstance(fields[name], tuple) else (fields[name],)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join(_TYPE_NAMES[t] for t in types)
            raise APIError(f"{param} must be {want}, got {json.dumps(value)[:80]}", param, "invalid_type")
        if value is not None and name in _INERT and not _INERT[name](value):
            raise APIError(f"{param}={json.dumps(value)[:80]} is not supported by this server", param, "unsupported")
    return {k: v for k, v in obj.items() if v is not None}


def _require(fields: dict, name: str):
    if name not in fields:
        raise APIError(f"missing required field {name!r}", name, "missing_field")
    return fields[name]


class _Exchange:
    """One API call: checked fields -> engine prompts and SamplingParams, and the rendering of
    its choices. Subclasses supply the prompt field, the logprobs fields and the choice shape."""

    FIELDS: dict = {}
    OBJECT = CHUNK_OBJECT = ID_PREFIX = PROMPT_FIELD = ""
    DEFAULT_MAX_TOKENS: int | None = None  # None: the rest of the context

    def __init__(self, body: dict, server: OpenAIServer):
        self.engine, self.tokenizer = server.engine, server.engine.tokenizer
        f = _check_fields(body, {**_SAMPLING_FIELDS, **self.FIELDS})
        self.model = f.get("model", server.model_name)
        if self.model != server.model_name:
            raise APIError(f"model {self.model!r} is not served here; this server serves "
                           f"{server.model_name!r} (GET /v1/models)", "model", "model_not_found")
        self.id, self.created = f"{self.ID_PREFIX}-{uuid.uuid4().hex}", int(time.time())
        self.stream = f.get("stream", False)
        options = _check_fields(f.get("stream_options", {}), {"include_usage": bool}, "stream_options.")
        if "stream_options" in f and not self.stream:
            raise APIError("stream_options is only allowed with stream=true", "stream_options")
        self.include_usage = options.get("include_usage", False)
        self.prompts = self._prompts(f)
        max_tokens, ctx = self._max_tokens(f), self.engine.max_seq_len
        for ids in self.prompts:
            if len(ids) + (max_tokens or 1) > ctx:
                raise APIError(f"this server's context is {ctx} tokens; the prompt has {len(ids)} tokens and "
                               f"max_tokens is {max_tokens or 'unset'}: shorten the prompt or lower max_tokens",
                               self.PROMPT_FIELD, "context_length_exceeded")
        try:
            self.params = [SamplingParams(
                n=f.get("n", 1), temperature=f.get("temperature", 1.0), top_p=f.get("top_p", 1.0),
                top_k=f.get("top_k", 0), stop=f.get("stop"), seed=f.get("seed"), logprobs=self._logprobs(f),
                max_tokens=ctx - len(ids) if max_tokens is None else max_tokens) for ids in self.prompts]
        except ValueError as e:
            raise APIError(str(e)) from None
        self.logprobs_on = self.params[0].logprobs is not None

    # -- per-endpoint parts --------------------------------------------------------------------
    def _prompts(self, f: dict) -> list[list[int]]:
        raise NotImplementedError

    def _logprobs(self, f: dict) -> int | None:
        raise NotImplementedError

    def _max_tokens(self, f: dict) -> int | None:
        return f.get("max_tokens", self.DEFAULT_MAX_TOKENS)

    def choice(self, index: int, text: str, logprobs: list[TokenLogprob], finish_reason: str | None) -> dict:
        raise NotImplementedError

    def chunk_choice(self, index: int, text: str, logprobs: list[TokenLogprob], finish_reason: str | None) -> dict:
        return self.choice(index, text, logprobs, finish_reason)

    # -- shared rendering ---------------------------------------------------------------------
    def response(self, choices: list[dict], usage: dict) -> dict:
        return {"id": self.id, "object": self.OBJECT, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": self.CHUNK_OBJECT, "created": self.created, "model": self.model,
               "choices": choices}
        return {**out, "usage": usage} if usage is not None else out

    def token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class _ChatExchange(_Exchange):
    FIELDS = {"messages": list, "max_completion_tokens": int, "logprobs": bool, "top_logprobs": int,
              "response_format": dict, "parallel_tool_calls": bool, "store": bool, "metadata": dict,
              "tools": list, "tool_choice": (str, dict)}
    OBJECT, CHUNK_OBJECT, ID_PREFIX, PROMPT_FIELD = "chat.completion", "chat.completion.chunk", "chatcmpl", "messages"
    _ROLES = ("system", "user", "assistant")

    def __init__(self, body: dict, server: OpenAIServer):
        self._started: set[int] = set()  # stream: choices whose first delta (with the role) went out
        super().__init__(body, server)

    def _prompts(self, f: dict) -> list[list[int]]:
        messages = _require(f, "messages")
        if not messages:
            raise APIError("messages must not be empty", "messages")
        turns = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise APIError(f"{where} must be an object", where, "invalid_type")
            m = _check_fields(m, {"role": str, "content": (str, list), "name": str}, where + ".")
            if m.get("role") not in self._ROLES:
                raise APIError(f"{where}.role must be one of {', '.join(self._ROLES)}", where + ".role")
            content = _require(m, "content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise APIError(f"{where}.content: only text parts are supported", where + ".content")
                content = "\n".join(p["text"] for p in content)
            turns.append({"role": m["role"], "content": content})
        try:
            return [self.tokenizer.encode(self.tokenizer.apply_chat_template(turns))]
        except ValueError as e:
            raise APIError(str(e), "messages") from None

    def _logprobs(self, f: dict) -> int | None:
        if "top_logprobs" in f and not f.get("logprobs"):
            raise APIError("top_logprobs requires logprobs=true", "top_logprobs")
        return f.get("top_logprobs", 0) if f.get("logprobs") else None

    def _max_tokens(self, f: dict) -> int | None:
        return f.get("max_completion_tokens", f.get("max_tokens"))

    def _logprobs_body(self, entries: list[TokenLogprob]) -> dict | None:
        def item(token_id: int, logprob: float) -> dict:
            s = self.token(token_id)
            return {"token": s, "logprob": logprob, "bytes": list(s.encode())}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(*t) for t in e.top]}
                            for e in entries]} if self.logprobs_on else None

    def choice(self, index, text, logprobs, finish_reason):
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": self._logprobs_body(logprobs), "finish_reason": finish_reason}

    def chunk_choice(self, index, text, logprobs, finish_reason):
        delta = {"content": text} if text else {}
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", "content": text}
        return {"index": index, "delta": delta, "logprobs": self._logprobs_body(logprobs),
                "finish_reason": finish_reason}


class _CompletionExchange(_Exchange):
    FIELDS = {"prompt": (str, list), "logprobs": int, "echo": bool, "suffix": str}
    OBJECT = CHUNK_OBJECT = "text_completion"
    ID_PREFIX, PROMPT_FIELD, DEFAULT_MAX_TOKENS = "cmpl", "prompt", 16

    def __init__(self, body: dict, server: OpenAIServer):
        self._offsets: defaultdict[int, int] = defaultdict(int)  # text_offset reached per choice
        super().__init__(body, server)

    def _prompts(self, f: dict) -> list[list[int]]:
        prompt = _require(f, "prompt")
        is_ids = lambda p: isinstance(p, list) and all(type(t) is int for t in p)  # noqa: E731
        if isinstance(prompt, str) or is_ids(prompt):
            prompt = [prompt]
        if not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
            raise APIError("prompt must be a string, an array of strings, an array of token ids or an array "
                           "of token-id arrays, and not empty", "prompt", "invalid_type")
        prompts = [self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in prompt]
        vocab = self.engine.model.config.vocab_size
        for ids in prompts:
            if not ids:
                raise APIError("prompt must not be empty", "prompt")
            if not all(0 <= t < vocab for t in ids):
                raise APIError(f"prompt token ids must be in [0, {vocab})", "prompt")
        return prompts

    def _logprobs(self, f: dict) -> int | None:
        return f.get("logprobs")

    def _logprobs_body(self, index: int, entries: list[TokenLogprob]) -> dict | None:
        """Legacy layout; text_offset counts characters from the start of the completion."""
        if not self.logprobs_on:
            return None
        tokens = [self.token(e.token_id) for e in entries]
        offsets = []
        for s in tokens:
            offsets.append(self._offsets[index])
            self._offsets[index] += len(s)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self.token(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}

    def choice(self, index, text, logprobs, finish_reason):
        return {"index": index, "text": text, "logprobs": self._logprobs_body(index, logprobs),
                "finish_reason": finish_reason}


class _Job:
    """The engine requests behind one API call (one per prompt). The engine thread reports to one
    queue: (prompt, sample, new_text, logprob entries so far) per update, (prompt, None, ...) at
    the end of a prompt's request."""

    def __init__(self, engine: Engine, prompts: list[list[int]], params: list[SamplingParams]):
        self.engine, self.n = engine, params[0].n
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.requests = []
        try:
            for p, (ids, sp) in enumerate(zip(prompts, params)):
                self.requests.append(engine.submit(ids, sp, on_update=self._reporter(p)))
        except ValueError as e:
            self.cancel()
            raise APIError(str(e)) from None

    def _reporter(self, p: int) -> Callable:
        def on_update(seq, text):  # runs on the engine thread: keep it trivial
            j = None if seq is None else next(j for j, s in enumerate(seq.request.seqs) if s is seq)
            self._queue.put((p, j, text, 0 if seq is None else len(seq.logprobs)))
        return on_update

    def events(self, client_gone: Callable[[], bool]) -> Iterator[tuple[int, int | None, str, int]]:
        """Yield updates until every request has ended; raise _ClientGone if the client hangs up."""
        pending, next_check = len(self.requests), time.monotonic() + _POLL_S
        while pending:
            try:
                event = self._queue.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                event = None
            if time.monotonic() >= next_check:
                if client_gone():
                    raise _ClientGone
                next_check = time.monotonic() + _POLL_S
            if event is not None:
                pending -= event[1] is None
                yield event

    def index(self, p: int, j: int) -> int:
        return p * self.n + j

    def completions(self) -> list[tuple[int, Completion]]:
        return [(self.index(p, j), c) for p, r in enumerate(self.requests) for j, c in enumerate(r.completions())]

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

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        app, path, self._streaming = self.server.app, self.path.split("?", 1)[0], False
        routes = {"/health": ("GET", lambda _: self._send_json(200, {"status": "ok"})),
                  "/v1/models": ("GET", lambda _: self._send_json(200, app.models())),
                  "/v1/chat/completions": ("POST", lambda b: self._complete(_ChatExchange(b, app))),
                  "/v1/completions": ("POST", lambda b: self._complete(_CompletionExchange(b, app)))}
        try:
            body = self._read_json() if self.command == "POST" else None
            if path not in routes:
                raise APIError(f"no such endpoint: {self.command} {path}", code="not_found", status=404)
            if path != "/health" and not app.authorized(self.headers.get("Authorization", "")):
                raise APIError("missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                               "the key the server was started with (--api-key)", code="invalid_api_key", status=401)
            method, handle = routes[path]
            if self.command != method:
                raise APIError(f"{path} takes {method}, not {self.command}", code="method_not_allowed", status=405)
            handle(body)
        except APIError as e:
            self._send_json(e.status, e.body())
        except (_ClientGone, OSError):
            self.close_connection = True
        except Exception:
            log.exception("error while serving %s %s", self.command, path)
            self.close_connection = True
            if not self._streaming:
                self._send_json(500, APIError("internal server error (see the server log)", status=500).body())

    def _read_json(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True  # the body's end is unknown: the connection cannot be reused
            raise APIError("a POST needs a Content-Length header (chunked request bodies are not supported)",
                           code="length_required", status=411) from None
        if not 0 <= length <= _MAX_BODY:
            self.close_connection = True
            raise APIError(f"request body must be at most {_MAX_BODY} bytes", code="too_large", status=413)
        try:
            body = json.loads(self.rfile.read(length))
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
        """EOF on the socket (peeked, so a pipelined next request is left in place)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _complete(self, ex: _Exchange) -> None:
        job = _Job(ex.engine, ex.prompts, ex.params)
        try:
            if ex.stream:
                self._stream(ex, job)
            else:
                for _ in job.events(self._client_gone):
                    pass
                choices = [ex.choice(i, c.text, c.logprobs or [], c.finish_reason) for i, c in job.completions()]
                self._send_json(200, ex.response(choices, job.usage()))
        finally:
            job.cancel()

    def _stream(self, ex: _Exchange, job: _Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._streaming = True
        sent: defaultdict[int, int] = defaultdict(int)  # logprob entries sent per choice
        for p, j, text, n_logprobs in job.events(self._client_gone):
            if j is not None:
                i = job.index(p, j)
                entries = job.requests[p].seqs[j].logprobs[sent[i]:n_logprobs]
                sent[i] = n_logprobs
                self._write_event(ex.chunk([ex.chunk_choice(i, text, entries, None)]))
                continue
            for j, c in enumerate(job.requests[p].completions()):
                i = job.index(p, j)
                self._write_event(ex.chunk([ex.chunk_choice(i, "", (c.logprobs or [])[sent[i]:], c.finish_reason)]))
        if ex.include_usage:
            self._write_event(ex.chunk([], job.usage()))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")  # last chunk of the HTTP body

    def _write_event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError:
            raise _ClientGone from None


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: bursts of concurrent connects are not dropped

    def __init__(self, address: tuple[str, int], app: OpenAIServer):
        super().__init__(address, _Handler)
        self.app, self.connections = app, set()


class OpenAIServer:
    """Serve `engine` under the OpenAI API as `model_name`; starts the engine's worker too.

        server = OpenAIServer(engine, "smollm2-135m-instruct")
        port = server.start()          # background thread; port 0 picks a free port
        ... OpenAI(base_url=server.base_url, api_key="unused") ...
        server.stop()
    """

    def __init__(self, engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_requests: bool = False):
        self.engine, self.model_name, self.host, self.port = engine, model_name, host, port
        self.api_key, self.log_requests = api_key, log_requests
        self.created = int(time.time())
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
        """Stop accepting, close open connections (their unfinished requests get cancelled)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._httpd.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
