"""`load_task(name, split)`: the one entry point from a task name to a loaded `Task`."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

from . import code, drop, gsm8k, hotpotqa, magicore_sets, math
from .base import Task
from .data import resolve_data_dir

LOADERS: dict[str, Callable[[str, Path], Task]] = {  # name -> load(split, data_dir)
    "gsm8k": gsm8k.load,
    "math": math.load,
    "humaneval": code.load_humaneval,
    "mbpp": code.load_mbpp,
    "drop": drop.load,
    "hotpotqa": hotpotqa.load,
    **{name: functools.partial(magicore_sets.load, name) for name in magicore_sets.SETS},
}
TASK_NAMES = tuple(LOADERS)


def load_task(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> Task:
    """Load one split of a benchmark.

    `name` is one of TASK_NAMES; `split` is "validate" or "test" for the AFlow sets
    (HotpotQA's two splits are halves of its validation file, see hotpotqa.py) and "test"
    for the magicore-* sets. `data_dir` is the folder containing `aflow/` and `magicore/`;
    when None, $SCOREFLOW_DATA, else the copy shipped in the package.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return LOADERS[name](split, resolve_data_dir(data_dir))
