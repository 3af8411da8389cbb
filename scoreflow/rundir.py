"""Crash-safe run-directory records: JSON-lines files appended one complete record at a time,
and stage markers. A process killed mid-write leaves at most one partial last line, which the
reader drops (and truncates), so a resumed run redoes exactly the unfinished work. The run's
settings, stored once, so that a resumed run cannot mix other settings into it. And a lock, so
that two runs never write one directory at once."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from .cli import UserError


class JsonlLog:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a partial last line from a killed writer
            with open(self.path, "r+b") as fh:
                fh.truncate(len(complete))
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())

    def write(self, records: list[dict]) -> None:
        """Replace the whole file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, self.path)


def stage_done(stage_dir: Path, stage: str) -> bool:
    return (stage_dir / f".{stage}.done").exists()


def mark_done(stage_dir: Path, stage: str, info: dict | None = None) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / f".{stage}.done").write_text(json.dumps(info or {}))


def stage_info(stage_dir: Path, stage: str) -> dict:
    path = stage_dir / f".{stage}.done"
    return json.loads(path.read_text()) if path.exists() else {}


def _unwritable(run_dir: Path, e: OSError) -> UserError:
    return UserError(f"cannot write the run directory {run_dir} ({e.strerror or e}); pass a writable --out")


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"dpo": {"lr": 1e-4}} -> {"dpo.lr": 1e-4}, so a difference names the nested setting."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_stored_settings(run_dir: Path, settings: dict, normalize: Callable[[dict], dict] = lambda d: d) -> bool:
    """True when run_dir/config.json holds `settings` (JSON-able), False when it holds none;
    refuses other ones, naming each setting that differs with its stored and given value.
    `normalize` maps the stored dict to today's form (defaults of fields added since) first.
    Reads only: a command calls it before loading a model for a run it would then refuse."""
    path = run_dir / "config.json"
    if not path.is_file():
        return False
    stored, given = _flat(normalize(json.loads(path.read_text()))), _flat(json.loads(json.dumps(settings)))
    changed = sorted(k for k in stored.keys() | given.keys() if stored.get(k) != given.get(k))
    if changed:
        values = "; ".join(f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}" for k in changed)
        raise ValueError(f"{run_dir} holds a run with other settings ({values}); rerun with the same flags "
                         "to resume it, or choose another --out")
    return True


def save_or_check_settings(run_dir: Path, settings: dict, normalize: Callable[[dict], dict] = lambda d: d) -> None:
    """Write `settings` to run_dir/config.json, or, when it exists, check them (check_stored_settings)."""
    if check_stored_settings(run_dir, settings, normalize):
        return
    path, wanted = run_dir / "config.json", json.loads(json.dumps(settings))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise _unwritable(run_dir, e) from None


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on run_dir for the block (fcntl.flock on run_dir/.lock, which
    holds the owner's PID); another process that asks for it is refused at once, naming that
    PID. The kernel drops the lock when its process dies, so a killed run's lock file never
    blocks the resume."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _unwritable(run_dir, e) from None
    with os.fdopen(fd, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = fh.read().strip() or "unknown"
            raise UserError(f"{run_dir} is in use by another run (PID {owner}); wait for it to finish, or pass "
                            "another --out") from None
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
