"""On-disk cache of successful chat-completion replies, one JSON file per request.

Key = sha256 of the canonical JSON of everything that shapes the reply (URL path, model,
messages, every sampling parameter) and of which call it was (the run's scope and the call's
number in it: client.py replays a call only when a crashed run is resumed). Files live in 256 shard directories
(`ab/abcdef....json`) so no directory grows huge. Writes go to a temp file in the same
directory and are published with `os.replace`, which is atomic: concurrent writers of the
same key (same request, same reply) each leave a complete file, and readers never see a
partial one. Only validated replies are stored, so a hit never replays an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


class ResponseCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def key(request: dict) -> str:
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored reply, or None on a miss (an unreadable file counts as a miss and is
        overwritten by the next successful reply)."""
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, reply: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(reply, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
