"""A pre-flight check that an endpoint answers, before a run spends minutes on work that needs
it: a wrong host or port, or a server that accepts connections and never answers, should be
one clear line, not a retry storm or minutes of silence later."""

from __future__ import annotations

import os

import httpx

from scoreflow.cli import Bounds, UserError

PREFLIGHT_TIMEOUT = Bounds(0, 3600, low_open=True)  # seconds, the range of --preflight-timeout
CHAT, COMPLETIONS = "chat/completions", "completions"


def require_answering(base_url: str, flag: str, model: str, *, api_key: str | None = None, timeout_s: float = 30.0,
                      route: str = CHAT) -> None:
    """Send one 1-token request to `base_url/route` (chat or legacy completions) and raise
    UserError naming `flag` when nothing accepts the connection, or when what accepts it sends
    no answer within `timeout_s`. Any HTTP answer counts, an error status too: the first real
    request reports a wrong key or model name with the server's own words. `api_key` defaults
    to $OPENAI_API_KEY, as the clients'."""
    if not base_url.startswith(("http://", "https://")):
        raise UserError(f"{flag} {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    key = api_key or os.environ.get("OPENAI_API_KEY")
    prompt = {"messages": [{"role": "user", "content": "Hi"}]} if route == CHAT else {"prompt": "Hi"}
    try:
        httpx.post(f"{base_url.rstrip('/')}/{route}", json={"model": model, "max_tokens": 1, **prompt},
                   headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=timeout_s)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        reason = str(e) or type(e).__name__
        raise UserError(f"{flag} {base_url} is unreachable ({reason}); start the server there or fix {flag}") from None
    except httpx.TimeoutException:
        raise UserError(f"{flag} {base_url} accepted the connection but did not answer a 1-token request in "
                        f"{timeout_s:g} s; check that the server there is up and serving {model!r}, or raise "
                        "--preflight-timeout") from None
    except httpx.HTTPError as e:  # a closed connection, a broken response: no run could use it
        raise UserError(f"{flag} {base_url} did not answer a 1-token request with HTTP ({type(e).__name__}: {e}); "
                        f"check that an OpenAI-compatible server is there, or fix {flag}") from None
