"""Locating and reading the benchmark files, with errors that say what to do.

Layout: the data directory is the folder that *contains* `aflow/` and `magicore/`
(e.g. `shared/datasets`), given as `data_dir=` / `--data-dir`, else `$SCOREFLOW_DATA`, else
the development checkout's `../shared/datasets` beside the repository, when it exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV_VAR = "SCOREFLOW_DATA"
CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # a dev checkout's copy
_LAYOUT = "the folder that contains aflow/ and magicore/ (e.g. shared/datasets)"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument, else $SCOREFLOW_DATA, else CHECKOUT_DATA; it must exist."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or (CHECKOUT_DATA if CHECKOUT_DATA.is_dir() else None)
    if data_dir is None:
        raise FileNotFoundError(
            f"no benchmark data directory given: pass --data-dir (data_dir=) or set "
            f"{ENV_VAR} to {_LAYOUT}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark data directory {path} does not exist: pass --data-dir or set "
            f"{ENV_VAR} to {_LAYOUT}"
        )
    return path


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark file {path} not found: the data directory must be {_LAYOUT}"
        )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); bad lines name file and line."""
    rows = []
    with _existing(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append(row)
    return rows


def read_json_array(path: Path) -> list[dict[str, Any]]:
    """Rows of a file holding one JSON array of objects."""
    try:
        rows = json.loads(_existing(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON array of objects")
    return rows


def aflow_rows(data_dir: Path, name: str, split: str) -> list[dict[str, Any]]:
    """Rows of `aflow/<name>_<split>.jsonl`."""
    return read_jsonl(data_dir / "aflow" / f"{name}_{split}.jsonl")


def check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    """Fail with the list of valid splits when `split` is not one of them."""
    if split not in splits:
        raise ValueError(f"task {name!r} has splits {list(splits)}, not {split!r}")
