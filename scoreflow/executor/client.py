"""Async client for OpenAI-compatible chat completions: the executor LLM of every operator.

POST {base_url}/chat/completions over one `httpx.AsyncClient`; works against OpenAI, vLLM and
our own `scoreflow.serve`. `complete()` posts a raw prompt to the legacy {base_url}/completions
route instead (a remote generator: optimize/generator.py), with the same retries and limits.
What the reference code lacked (PAPERS.md §R), done here:

- transient failures are retried: HTTP 408/409/429/5xx, timeouts, refused or dropped
  connections, with exponential backoff and jitter, waiting at least `Retry-After` seconds
  (capped at MAX_RETRY_AFTER_S); 400/401/403/404 fail at once with advice;
- empty or malformed replies raise `EmptyReplyError` / `MalformedReplyError`, never "".
  They are retried BAD_REPLY_RETRIES time(s): a proxy hiccup is transient, but an empty
  reply at temperature 0 usually repeats, so retrying more only burns money;
- at most `max_concurrency` requests in flight (an asyncio.Semaphore held per attempt,
  released while backing off);
- usage and cost per client (`client.usage`);
- an optional on-disk cache (`cache.py`) that only resumes: it is used by scoped views
  (`client.scoped("iter_0/<workflow>/run2")`, one per run of a workflow), which number their
  calls, and keys each call by (scope, number, request). A resumed run replays exactly the
  calls its crashed predecessor had finished; identical requests inside a run, or in another
  run or workflow, are real requests (the paper's 3 runs are 3 real calls). A client used
  without a scope never touches the cache.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import os
import random
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from scoreflow.executor.cache import ResponseCache

# USD per 1M tokens (input, output), public list prices. Dated variants ("gpt-4o-mini-2024-07-18")
# match their family by prefix; pass `prices=` to add or override models.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}
BAD_REPLY_RETRIES = 1
MAX_RETRY_AFTER_S = 60.0


class ExecutorError(Exception):
    """Base of everything the executor client raises."""


class APIStatusError(ExecutorError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class APIConnectionError(ExecutorError):
    """No reply at all: refused or dropped connection, or a timeout."""


class MalformedReplyError(ExecutorError):
    """HTTP 200, but not a chat completion (not JSON, no choices, wrong shape)."""


class EmptyReplyError(MalformedReplyError):
    """A well-formed completion without any text."""


_REJECTED = "the server rejected the request; check the messages and sampling parameters"
_ADVICE = {
    400: (BadRequestError, _REJECTED),
    401: (AuthenticationError, "set OPENAI_API_KEY or pass --api-key"),
    403: (AuthenticationError, "the API key may not use model {model!r}; check the key's project and permissions"),
    404: (NotFoundError, "check base_url (usually ends in /v1; got {base_url}) and the model name {model!r}"),
    422: (BadRequestError, _REJECTED),
    429: (RateLimitError, "rate limited; lower max_concurrency or raise max_retries"),
}


@dataclass(frozen=True)
class ChatResult:
    """One completion (chat or legacy): n texts (`text` when n=1), why each stopped, and token usage."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str | None, ...]
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0]


@dataclass
class Usage:
    """Running totals for one client. requests = HTTP requests sent (retries included),
    retries = requests re-sent after a failure, errors = chat() calls that raised,
    cache_hits = chat() calls answered from disk (free)."""

    requests: int = 0
    retries: int = 0
    errors: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ExecutorClient:
    """`async with ExecutorClient("http://127.0.0.1:8000/v1", "gpt-4o-mini") as c:
    r = await c.chat([{"role": "user", "content": "hi"}])`.

    api_key defaults to $OPENAI_API_KEY (none is sent when neither is set, for local servers).
    timeout is per attempt, in seconds. backoff_s * 2**attempt (capped at max_backoff_s,
    times a random factor in [0.5, 1]) is the wait before a retry. default_max_tokens caps
    calls that set no max_tokens (None: the server decides).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 16,
                 timeout: float = 120.0, cache_dir: str | os.PathLike | None = None, max_retries: int = 5,
                 prices: dict[str, tuple[float, float]] | None = None, backoff_s: float = 0.5,
                 max_backoff_s: float = 20.0, default_max_tokens: int | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, e.g. http://127.0.0.1:8000/v1; "
                             f"got {base_url!r}")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.default_max_tokens = default_max_tokens
        self._url = f"{self.base_url}/chat/completions"
        self._price = price_for(model, prices)
        self._cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._cache_scope: str | None = None
        self._calls = itertools.count()  # numbers this view's calls, in the order they are made
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._usage = Usage()
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=timeout,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency))

    def scoped(self, scope: str) -> "ExecutorClient":
        """The same client (connections, concurrency limit, usage totals, cache directory) for one
        run of one workflow, e.g. `scoped("iter_0/<workflow id>/run2")`, numbering its calls from
        0. The n-th call replays the cache only if a view of the same scope made the same n-th
        request before (a run that crashed); every other call is a real request."""
        view = copy.copy(self)
        view._cache_scope, view._calls = scope, itertools.count()
        return view

    @property
    def usage(self) -> Usage:
        """A snapshot of the totals so far."""
        return dataclasses.replace(self._usage)

    async def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int | None = None,
                   n: int = 1, stop: str | list[str] | None = None, seed: int | None = None,
                   top_p: float | None = None) -> ChatResult:
        """One chat completion. Parameters left as None are not sent (the server's default
        applies; max_tokens=None lets the model finish)."""
        optional = dict(max_tokens=max_tokens or self.default_max_tokens, stop=stop, seed=seed, top_p=top_p)
        payload = {"model": self.model, "messages": messages, "temperature": temperature, "n": n,
                   **{k: v for k, v in optional.items() if v is not None}}
        key = None
        if self._cache is not None and self._cache_scope is not None:
            key = ResponseCache.key({"path": urlsplit(self._url).path, **payload, "scope": self._cache_scope,
                                     "call": next(self._calls)})
            if (reply := self._cache.get(key)) is not None:
                self._usage.cache_hits += 1
                return dataclasses.replace(_parse(reply, n), cached=True)
        try:
            reply, result = await self._post(self._url, payload, lambda r: _parse(r, n))
        except ExecutorError:
            self._usage.errors += 1
            raise
        if key is not None:
            self._cache.put(key, reply)
        return result

    async def complete(self, prompt: str, *, temperature: float = 0.0, max_tokens: int | None = None, n: int = 1,
                       stop: str | list[str] | None = None, seed: int | None = None,
                       top_p: float | None = None) -> ChatResult:
        """One legacy completion of the raw `prompt` (no chat template: the caller applied it).
        An empty text is a valid answer here (a model may stop at once); it is never cached."""
        optional = dict(max_tokens=max_tokens or self.default_max_tokens, stop=stop, seed=seed, top_p=top_p)
        payload = {"model": self.model, "prompt": prompt, "temperature": temperature, "n": n,
                   **{k: v for k, v in optional.items() if v is not None}}
        try:
            return (await self._post(f"{self.base_url}/completions", payload, lambda r: _parse_texts(r, n)))[1]
        except ExecutorError:
            self._usage.errors += 1
            raise

    async def _post(self, url: str, payload: dict, parse: Callable[[dict], ChatResult]) -> tuple[dict, ChatResult]:
        """Send to `url` with retries; returns the raw reply (for the cache) and parse(reply)."""
        attempts, attempt, bad_replies = self.max_retries + 1, 0, 0
        while True:
            retry_after = None
            try:
                async with self._semaphore:
                    self._usage.requests += 1
                    response = await asyncio.wait_for(self._http.post(url, json=payload), self.timeout)
                if response.status_code == 200:
                    reply = _json(response)
                    self._account(reply)
                    return reply, parse(reply)
                error = self._status_error(response, url, f"attempt {attempt + 1} of {attempts}")
                if not _retryable(response.status_code):
                    raise error
                retry_after = _retry_after(response)
            except MalformedReplyError as e:
                bad_replies += 1
                if bad_replies > BAD_REPLY_RETRIES:
                    raise
                error = e
            except (httpx.TransportError, asyncio.TimeoutError) as e:
                error = APIConnectionError(
                    f"no reply from {url} (attempt {attempt + 1} of {attempts}): {type(e).__name__} {e}; "
                    f"check that the server is running, or raise timeout (now {self.timeout}s)")
            if attempt + 1 == attempts:
                raise error
            self._usage.retries += 1
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        return backoff if retry_after is None else max(backoff, min(retry_after, MAX_RETRY_AFTER_S))

    def _status_error(self, response: httpx.Response, url: str, attempt: str) -> APIStatusError:
        status = response.status_code
        fallback = "the server failed; check its logs" if status >= 500 else "the server refused the request"
        cls, advice = _ADVICE.get(status, (APIStatusError, fallback))
        advice = advice.format(model=self.model, base_url=self.base_url)
        return cls(f"HTTP {status} from {url} ({attempt}): {_server_message(response)} -- {advice}", status)

    def _account(self, reply: dict) -> None:
        """Count tokens of every JSON reply, valid or not: an empty reply was still billed."""
        prompt, completion = _tokens(reply)
        self._usage.prompt_tokens += prompt
        self._usage.completion_tokens += completion
        if self._price is not None:
            self._usage.cost_usd += (prompt * self._price[0] + completion * self._price[1]) / 1e6

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "ExecutorClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


def price_for(model: str, prices: dict[str, tuple[float, float]] | None = None) -> tuple[float, float] | None:
    """USD per 1M (input, output) tokens: the longest entry of DEFAULT_PRICES + `prices` that is
    the model name or a prefix of it ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini", not "gpt-4o");
    None (cost not counted) for unknown, e.g. local, models."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by LLM APIs; it is ignored)."""
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _server_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return _excerpt(response.text)


def _excerpt(text: Any, limit: int = 200) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _json(response: httpx.Response) -> dict:
    try:
        reply = response.json()
    except ValueError:
        raise MalformedReplyError(f"reply is not JSON: {_excerpt(response.text)}") from None
    if not isinstance(reply, dict):
        raise MalformedReplyError(f"reply is not a JSON object: {_excerpt(reply)}")
    return reply


def _choices(reply: dict, n: int) -> list:
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReplyError(f"reply has no choices: {_excerpt(reply)}")
    if len(choices) != n:
        raise MalformedReplyError(f"asked for n={n} completions, got {len(choices)}; if the server does not "
                                  f"support n, call it {n} times")
    return choices


def _parse_texts(reply: dict, n: int) -> ChatResult:
    """Validate a legacy text-completion object: n choices with a string `text` each, in the
    order of their `index`."""
    choices = _choices(reply, n)
    if not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices):
        raise MalformedReplyError(f"a choice has no text: {_excerpt(choices)}")
    choices = sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
    return ChatResult(tuple(c["text"] for c in choices), tuple(c.get("finish_reason") for c in choices),
                      *_tokens(reply))


def _parse(reply: dict, n: int) -> ChatResult:
    """Validate a chat-completion object; anything without n non-blank texts is an error."""
    texts, reasons = [], []
    for choice in _choices(reply, n):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if message is None or not isinstance(content, (str, type(None))):
            raise MalformedReplyError(f"choice is not a chat message: {_excerpt(choice)}")
        if not content or not content.strip():
            hint = "raise max_tokens" if reason == "length" else "the server produced no text"
            raise EmptyReplyError(f"empty reply (finish_reason={reason!r}); {hint}")
        texts.append(content)
        reasons.append(reason)
    return ChatResult(tuple(texts), tuple(reasons), *_tokens(reply))


def _tokens(reply: dict) -> tuple[int, int]:
    """(prompt, completion) tokens; (0, 0) when the server reports no usage."""
    usage = reply.get("usage")
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0
