"""The OpenAI wire format of our server: request fields checked and turned into engine
prompts + SamplingParams, and choices rendered back (chat and legacy completions, streamed or not).

    ex = ChatExchange(body, server)      # raises APIError (an OpenAI error body) on a bad request
    ex.prompts, ex.params                # what the engine runs
    ex.response([ex.choice(...)], usage)

Rules where the API leaves a choice to the server are listed in server.py's docstring.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING

from .generate import TokenLogprob
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .server import OpenAIServer

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


def check_fields(obj: dict, fields: dict, prefix: str = "") -> dict:
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


class Exchange:
    """One API call: checked fields -> engine prompts + SamplingParams, and how its choices render.
    Subclasses give FIELDS, `_prompts(fields) -> (token-id lists, max_tokens, logprobs)` and
    `choice(index, text, logprobs, finish_reason)` (and `chunk_choice` where a stream differs)."""

    FIELDS: dict = {}
    OBJECT = CHUNK_OBJECT = ID_PREFIX = PROMPT_FIELD = ""

    def __init__(self, body: dict, server: OpenAIServer):
        self.engine, self.tokenizer = server.engine, server.engine.tokenizer
        f = check_fields(body, {**_SAMPLING_FIELDS, **self.FIELDS})
        self.model = f.get("model", server.model_name)
        if self.model != server.model_name:
            raise APIError(f"model {self.model!r} is not served here; this server serves "
                           f"{server.model_name!r} (GET /v1/models)", "model", "model_not_found")
        self.id, self.created = f"{self.ID_PREFIX}-{uuid.uuid4().hex}", int(time.time())
        self.stream = f.get("stream", False)
        if "stream_options" in f and not self.stream:
            raise APIError("stream_options is only allowed with stream=true", "stream_options")
        options = check_fields(f.get("stream_options", {}), {"include_usage": bool}, "stream_options.")
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


class ChatExchange(Exchange):
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
            m = check_fields(m, {"role": str, "content": (str, list), "name": str}, where + ".")
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


class CompletionExchange(Exchange):
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
