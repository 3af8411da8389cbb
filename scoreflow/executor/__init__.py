"""Executor LLM access: an async OpenAI-compatible chat client with retries, limits, cache, usage."""

from scoreflow.executor.client import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ChatResult,
    EmptyReplyError,
    ExecutorClient,
    ExecutorError,
    MalformedReplyError,
    NotFoundError,
    RateLimitError,
    Usage,
)

__all__ = [
    "APIConnectionError", "APIStatusError", "AuthenticationError", "BadRequestError", "ChatResult",
    "EmptyReplyError", "ExecutorClient", "ExecutorError", "MalformedReplyError", "NotFoundError",
    "RateLimitError", "Usage",
]
