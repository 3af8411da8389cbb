"""The OpenAI wire format of our server: the body parsed, request fields checked and turned into
engine prompts + SamplingParams, and choices rendered back (chat and legacy completions, streamed
or not).

    body = parse_body(raw)                       # raises APIError (an OpenAI error body) on bad JSON
    ex = ChatExchange(body, server)              # ... and on a bad field, naming it in `param`
    ex.prompts, ex.params                        # what the engine runs
    ex.response([ex.choice(...)], usage)

What one request may cost is bounded before anything is tokenized (`Limits`): the body by the
bytes one context window of text can need, each prompt by the characters it can hold, the
sequences by the engine's batch. Every number is range-checked here, so NaN, Infinity and huge
integers are refused with the field's name and range, never reach the engine; every text that
reaches the tokenizer or the engine is checked to be valid Unicode (`unicode_text`).
Rules where the API leaves a choice to the server are listed in server.py's docstring.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from .engine import Engine, TokenLogprob
from .sampling import SamplingParams
from .sampling_ranges import TEMPERATURE, TOP_P

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
          "echo": lambda v: not v, "suffix": lambda v: not v,
          "tool_calls": lambda v: not v, "audio": lambda v: False, "function_call": lambda v: False}
_MAX_STOP = 4  # OpenAI's limit on stop strings
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # int64 or uint64, as clients send
_LONGEST_INT = 40  # digits; longer JSON integers are out of every range (and slow to convert)
_JSON_BYTES_PER_BYTE = 6  # worst JSON escaping: one UTF-8 byte as \u00XX (a 4-byte character: 12)
_BODY_OVERHEAD = 64 << 10  # the request's other fields


class APIError(Exception):
    """A refused request, rendered as OpenAI's error body (`headers`: extra response headers)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.param, self.code, self.status, self.headers = param, code, status, headers or {}

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this engine, checked before the costly steps.

    A token stands for at most `bytes_per_token` UTF-8 bytes (the longest in the vocabulary), so
    text of more than context x bytes_per_token characters cannot fit, whatever it tokenizes to
    (for a lossless tokenizer: a character is at least a byte). JSON spends at most 6 bytes per
    UTF-8 byte (an escape), which sizes the body: about 1 MB for a 2048-token context and
    SmolLM2's longest token of 81 bytes."""

    context: int  # tokens per sequence (prompt + completion)
    sequences: int  # sequences decoded at once: prompts x n per request
    vocab_size: int
    bytes_per_token: int

    @classmethod
    def of(cls, engine: Engine) -> Limits:
        tok = engine.tokenizer
        longest = max(len(tok.decode([i]).encode()) for i in range(tok.vocab_size))
        return cls(engine.max_seq_len, engine.cache.n_slots, engine.model.config.vocab_size, longest)

    @property
    def max_chars(self) -> int:
        return self.context * self.bytes_per_token

    @property
    def max_body(self) -> int:
        return self.max_chars * _JSON_BYTES_PER_BYTE + _BODY_OVERHEAD


class _HugeInt(int):
    """A JSON integer of more than _LONGEST_INT digits: held as ±10**_LONGEST_INT (outside every
    range we accept) instead of converted, which is quadratic in its length (Python refuses
    more than 4300 digits); shown by its length."""

    def __new__(cls, text: str) -> _HugeInt:
        self = super().__new__(cls, -10 ** _LONGEST_INT if text.startswith("-") else 10 ** _LONGEST_INT)
        self.digits = len(text.lstrip("-"))
        return self

    def __repr__(self) -> str:
        return f"a {self.digits}-digit integer"

    __str__ = __repr__


def _parse_int(text: str) -> int:
    return int(text) if len(text) <= _LONGEST_INT else _HugeInt(text)


class Served(Protocol):
    """What an exchange reads of the server that received it (server.OpenAIServer)."""

    engine: Engine
    model_name: str
    limits: Limits


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object. NaN and Infinity parse (Python's json reads them) and
    fail the range check of their field later, which names it."""
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except RecursionError:
        raise APIError("request body is nested too deeply to parse", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise APIError(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"request body must be a JSON object, got {_show(body)}", code="invalid_json")
    return body


def _show(value) -> str:
    """A client's value, short, for an error message (a container by its kind: it may be huge or
    deeply nested)."""
    if isinstance(value, (dict, list)):
        return f"an {'object' if isinstance(value, dict) else 'array'} of {len(value)}"
    if isinstance(value, _HugeInt):
        return str(value)
    text = json.dumps(value[:41] if isinstance(value, str) else value)
    return text if len(text) <= 42 else text[:40] + '..."'


def check_fields(obj: dict, fields: dict, prefix: str = "") -> dict:
    """Drop nulls first (null means "default" in the OpenAI API, and clients send unset fields as
    null), then reject unknown fields, wrong JSON types and inert fields with an effect."""
    obj = {k: v for k, v in obj.items() if v is not None}
    for name, value in obj.items():
        param, types = prefix + name, fields.get(name)
        if types is None:
            raise APIError(f"unknown field {param!r}", param, "unknown_field")
        types = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join(_JSON_TYPES[t] for t in types)
            raise APIError(f"{param} must be {'an' if want[0] in 'aeiou' else 'a'} {want}, got {_show(value)}",
                           param, "invalid_type")
        if name in _INERT and not _INERT[name](value):
            raise APIError(f"{param}={_show(value)} is not supported here", param, "unsupported")
    return obj


def unicode_text(text: str, param: str) -> str:
    """`text`, refused when it holds a lone surrogate: JSON's escape "\\ud800" without its pair
    parses to one, and no UTF-8 text, so no tokenizer, can hold it."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as e:
            raise APIError(f"{param} holds a lone surrogate (\\u{ord(text[e.start]):04x} at character {e.start}): "
                           "send valid Unicode (a surrogate pair needs both halves)", param, "invalid_text") from None
    return text


def in_range(f: dict, name: str, lo: float, hi: float | None, default=None, lo_open: bool = False):
    """f[name] (or `default` when absent), checked to lie in [lo, hi] ((lo, hi] with lo_open, no
    upper bound for hi=None); NaN and Infinity fail."""
    value = f.get(name)
    if value is None:
        return default
    above = lo < value if lo_open else lo <= value
    if not (above and (hi is None or value <= hi)):
        where = f">= {lo}" if hi is None else f"in {'(' if lo_open else '['}{lo}, {hi}]"
        raise APIError(f"{name} must be {where}, got {_show(value)}", name, "invalid_value")
    return value


class Exchange:
    """One API call: checked fields -> engine prompts + SamplingParams, and how its choices render.
    Subclasses give FIELDS, `_prompts(fields) -> (token-id lists, max_tokens, logprobs)` and
    `choice(index, text, logprobs, finish_reason)` (and `chunk_choice` where a stream differs)."""

    FIELDS: dict = {}
    OBJECT = CHUNK_OBJECT = ID_PREFIX = PROMPT_FIELD = ""

    def __init__(self, body: dict, server: Served):
        self.engine, self.tokenizer, self.limits = server.engine, server.engine.tokenizer, server.limits
        f = check_fields(body, {**_SAMPLING_FIELDS, **self.FIELDS})
        self.model = f.get("model", server.model_name)
        if self.model != server.model_name:
            raise APIError(f"model {self.model!r} does not exist here; this server serves "
                           f"{server.model_name!r} (GET /v1/models)", "model", "model_not_found", status=404)
        self.id, self.created = f"{self.ID_PREFIX}-{uuid.uuid4().hex}", int(time.time())
        self.stream = f.get("stream", False)
        if "stream_options" in f and not self.stream:
            raise APIError("stream_options is only allowed with stream=true", "stream_options")
        options = check_fields(f.get("stream_options", {}), {"include_usage": bool}, "stream_options.")
        self.include_usage = options.get("include_usage", False)
        sampling = dict(n=in_range(f, "n", 1, self.limits.sequences, 1),
                        temperature=in_range(f, "temperature", TEMPERATURE.low, TEMPERATURE.high, 1.0),
                        top_p=in_range(f, "top_p", TOP_P.low, TOP_P.high, 1.0, lo_open=TOP_P.low_open),
                        top_k=min(in_range(f, "top_k", 0, None, 0), self.limits.vocab_size),  # huge = off
                        seed=in_range(f, "seed", *_SEED_RANGE), stop=self._stop(f))
        self.prompts, max_tokens, logprobs = self._prompts(f)
        self._check_size(sampling["n"], max_tokens)
        ctx = self.limits.context
        self.params = [SamplingParams(**sampling, logprobs=logprobs,
                                      max_tokens=ctx - len(ids) if max_tokens is None else max_tokens)
                       for ids in self.prompts]
        self.logprobs_on = logprobs is not None

    def _check_size(self, n: int, max_tokens: int | None) -> None:
        """Every prompt fits the context with its completion; all fit the batch at once."""
        ctx, sequences = self.limits.context, len(self.prompts) * n
        for ids in self.prompts:
            if len(ids) + (max_tokens or 1) > ctx:
                raise APIError(f"this server's context is {ctx} tokens; the prompt has {len(ids)} tokens and "
                               f"max_tokens is {max_tokens or 'unset'}: shorten the prompt or lower max_tokens",
                               self.PROMPT_FIELD, "context_length_exceeded")
        if sequences > self.limits.sequences:
            raise APIError(f"{len(self.prompts)} prompts x n={n} is {sequences} sequences; this server decodes at "
                           f"most {self.limits.sequences} at once: split the prompts over several requests",
                           self.PROMPT_FIELD, "too_many_sequences")

    def _check_chars(self, chars: int, param: str) -> None:
        """Refuse text that cannot fit the context before paying to tokenize it."""
        if chars > self.limits.max_chars:
            raise APIError(f"{param} has {chars} characters, more than this server's context of "
                           f"{self.limits.context} tokens can hold (at most {self.limits.max_chars}): shorten it",
                           param, "context_length_exceeded")

    @staticmethod
    def _stop(f: dict) -> list[str] | None:
        stop = f.get("stop")
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and not (len(stops) <= _MAX_STOP and all(isinstance(s, str) and s for s in stops)):
            raise APIError(f"stop must be a non-empty string or an array of at most {_MAX_STOP} of them, got "
                           f"{_show(stop)}", "stop", "invalid_value")
        return [unicode_text(s, "stop" if s is stop else f"stop[{i}]") for i, s in enumerate(stops)] if stops else None

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
    _ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
    _MESSAGE = {"role": str, "content": (str, list), "name": str}
    # what the official client's `message.model_dump()` sends back: ignored (tool calls only empty)
    _ASSISTANT = {**_MESSAGE, "refusal": str, "annotations": list, "tool_calls": list, "audio": dict,
                  "function_call": dict}

    def __init__(self, body: dict, server: Served):
        self._started: set[int] = set()  # stream: choices whose first delta (with the role) went out
        super().__init__(body, server)

    def _prompts(self, f: dict) -> tuple[list[list[int]], int | None, int | None]:
        if not f.get("messages"):
            raise APIError("messages must be a non-empty array of messages", "messages")
        turns = [self._turn(i, m) for i, m in enumerate(f["messages"])]
        self._check_chars(sum(len(t["content"]) for t in turns), "messages")
        if "top_logprobs" in f and not f.get("logprobs"):
            raise APIError("top_logprobs requires logprobs=true", "top_logprobs")
        max_tokens = "max_completion_tokens" if "max_completion_tokens" in f else "max_tokens"
        try:
            ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(turns))
        except ValueError as e:  # a tokenizer without a chat template
            raise APIError(str(e), "messages") from None
        return ([ids], in_range(f, max_tokens, 1, self.limits.context),
                in_range(f, "top_logprobs", 0, 20, 0) if f.get("logprobs") else None)

    def _turn(self, i: int, m) -> dict[str, str]:
        """messages[i] -> {"role", "content"} for the chat template (developer is system)."""
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(f"{where} must be a message object, got {_show(m)}", where, "invalid_type")
        if not isinstance(m.get("role"), str) or m["role"] not in self._ROLES:
            raise APIError(f"{where}.role must be one of {', '.join(self._ROLES)}, got {_show(m.get('role'))}",
                           where + ".role")
        m = check_fields(m, self._ASSISTANT if m["role"] == "assistant" else self._MESSAGE, where + ".")
        content = m.get("content")
        if content is None:
            raise APIError(f"{where}.content is missing", where + ".content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(f"{where}.content: only text parts are supported", where + ".content")
            content = "\n".join(p["text"] for p in content)
        return {"role": self._ROLES[m["role"]], "content": unicode_text(content, where + ".content")}

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

    def __init__(self, body: dict, server: Served):
        self._offsets: defaultdict[int, int] = defaultdict(int)  # text_offset reached per choice
        super().__init__(body, server)

    def _prompts(self, f: dict) -> tuple[list[list[int]], int | None, int | None]:
        prompt, vocab = f.get("prompt"), self.limits.vocab_size
        def is_ids(p) -> bool:
            return isinstance(p, list) and all(type(t) in (int, _HugeInt) for t in p)

        prompt = [prompt] if isinstance(prompt, str) or is_ids(prompt) else prompt
        if not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
            raise APIError("prompt is required: a string, an array of strings, an array of token ids or an "
                           "array of token-id arrays", "prompt", "invalid_type")
        if len(prompt) > self.limits.sequences:  # before tokenizing them all
            raise APIError(f"prompt has {len(prompt)} prompts; this server decodes at most "
                           f"{self.limits.sequences} sequences at once: split them over several requests",
                           "prompt", "too_many_sequences")
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                self._check_chars(len(p), "prompt")
                unicode_text(p, "prompt" if p is f["prompt"] else f"prompt[{i}]")
        prompts = [self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in prompt]
        if not all(ids and all(0 <= t < vocab for t in ids) for ids in prompts):
            raise APIError(f"every prompt needs at least one token, and token ids in [0, {vocab})", "prompt")
        return prompts, in_range(f, "max_tokens", 1, self.limits.context, 16), in_range(f, "logprobs", 0, 20)

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
