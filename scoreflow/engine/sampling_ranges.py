"""The ranges of the sampling settings: one rule for the server's protocol (a request's fields)
and for the commands' flags (checked before a model loads). Temperature and top_p are the
OpenAI API's ranges; a token count is at least 1 and at most what any context here can hold."""

from ..cli import Bounds

TEMPERATURE = Bounds(0, 2)
TOP_P = Bounds(0, 1, low_open=True)
MAX_TOKENS = Bounds(1, 1 << 20)
