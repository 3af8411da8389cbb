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
# ScoreFlow's DROP and HotpotQA: 1,000 sampled questions each, split 1:4 (its "Datasets"
# paragraph); the other AFlow sets ship as the paper used them.
PAPER_SPLIT_SIZES = {("drop", "validate"): 200, ("drop", "test"): 800,
                     ("hotpotqa", "validate"): 200, ("hotpotqa", "test"): 800}


def load_task(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> Task:
    """Load one split of a benchmark.

    `name` is one of TASK_NAMES; `split` is "validate" or "test" for the AFlow sets
    (HotpotQA's two splits are halves of its validation file, see hotpotqa.py) and "test"
    for the magicore-* sets. `data_dir` is the folder containing `aflow/` and `magicore/`;
    when None, $SCOREFLOW_DATA, else the copy shipped in the package. A split without a
    question is an error: no command has anything to do on it.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    task = LOADERS[name](split, resolve_data_dir(data_dir))
    if not task.questions:
        raise ValueError(f"{name}/{split} has no questions: its file in {resolve_data_dir(data_dir)} is empty; "
                         "restore it, or pass --data-dir with a full copy (scoreflow/data/PROVENANCE.md)")
    return task


def smaller_than_the_paper(task: Task, split: str) -> str | None:
    """One line for a split with fewer questions than the paper's, saying how to supply the
    full one (the packaged DROP and HotpotQA files are smaller); None otherwise."""
    paper = PAPER_SPLIT_SIZES.get((task.name, split))
    if paper is None or len(task.questions) >= paper:
        return None
    return (f"{task.name}/{split} has {len(task.questions)} questions, the paper's has {paper}: put AFlow's full "
            f"{task.name}_test.jsonl in DIR/aflow/ and pass --data-dir DIR (scoreflow/data/PROVENANCE.md)")
