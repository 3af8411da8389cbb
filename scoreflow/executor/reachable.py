"""A pre-flight check that an endpoint answers at all, before a run spends minutes on work
that needs it: a wrong host or port should be one clear line, not a retry storm later."""

from __future__ import annotations

import httpx

from scoreflow.cli import UserError


def require_reachable(base_url: str, flag: str, timeout_s: float = 10.0) -> None:
    """Raise UserError naming `flag` when nothing accepts a connection at `base_url`. Whatever
    answers counts as reachable (auth and model names are checked by the first real request)."""
    if not base_url.startswith(("http://", "https://")):
        raise UserError(f"{flag} {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    try:
        httpx.get(base_url.rstrip("/") + "/models", timeout=timeout_s)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        reason = str(e) or type(e).__name__
        raise UserError(f"{flag} {base_url} is unreachable ({reason}); start the server there or fix {flag}") from None
    except httpx.HTTPError:
        pass  # it accepted the connection: something is there
