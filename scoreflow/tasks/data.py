"""Locating and reading the benchmark files, with errors that say what to do.

Layout: the data directory is the folder that *contains* `aflow/` and `magicore/`, given as
`data_dir=` / `--data-dir`, else `$SCOREFLOW_DATA`, else the copy shipped inside the package
(`scoreflow/data/`, provenance and licences in its PROVENANCE.md).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

ENV_VAR = "SCOREFLOW_DATA"
_LAYOUT = "the folder that contains aflow/ and magicore/ (as scoreflow/data/ in the package)"


def packaged_data_dir() -> Path:
    """The benchmark copy installed with the package (package data, see setup.py)."""
    return Path(str(importlib.resources.files("scoreflow") / "data"))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument, else $SCOREFLOW_DATA, else the packaged copy; it must exist."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or packaged_data_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark data directory {path} does not exist: pass --data-dir (or set "
            f"{ENV_VAR}) to {_LAYOUT}, or leave both unset to use the packaged copy"
        )
    return path


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark file {path} not found: the data directory must be {_LAYOUT}"
        )
    return path


def _check_fields(path: Path, where: str, row: Any, required: tuple[str, ...]) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in required if name not in row]
    if missing:
        raise ValueError(f"{path}:{where}: missing field(s) {', '.join(missing)}; each row needs "
                         f"{', '.join(required)}")


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); a bad line or a row without one of the
    `required` fields is an error naming the file, the line and the field."""
    rows = []
    with _existing(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON line ({getattr(e, 'msg', e)})") from None
            _check_fields(path, str(lineno), row, required)
            rows.append(row)
    return rows


def read_json_array(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a file holding one JSON array of objects, each with the `required` fields."""
    try:
        rows = json.loads(_existing(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of objects")
    for i, row in enumerate(rows):
        _check_fields(path, f"row {i + 1}", row, required)
    return rows


def aflow_rows(data_dir: Path, name: str, split: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of `aflow/<name>_<split>.jsonl`, each with the `required` fields."""
    return read_jsonl(data_dir / "aflow" / f"{name}_{split}.jsonl", required)


def check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    """Fail with the list of valid splits when `split` is not one of them."""
    if split not in splits:
        raise ValueError(f"task {name!r} has splits {list(splits)}, not {split!r}")
