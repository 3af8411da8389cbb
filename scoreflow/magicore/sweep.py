"""Accuracy against the number of samples k (the MAgICoRE paper's figure): MAgICoRE, k-way
self-consistency and Best-of-k for each k of `python -m scoreflow.magicore --k-sweep 4,8,16`.

Each k is a resumable run of its own (runner.py) in OUT/k_sweep/k-K, with the main run's
settings but k and those two baselines. The ks run largest first, and a run starts from the
first k Solver chains of the largest run done so far (the main run's included) instead of
drawing new ones: with a seed those are exactly the chains a run with k would draw (chain i
has seed i), without one they are an equally good sample; either way the ks differ in k alone
and no Solver call is repeated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from scoreflow.rundir import JsonlLog
from scoreflow.tasks import Question, Task

from .agents import Agents
from .report import MAGICORE, METHOD_NAMES
from .reward import RewardModels
from .runner import MagicoreRunConfig, Runner

SWEEP_BASELINES = ("self_consistency", "best_of_k")


def parse_ks(spec: str) -> tuple[int, ...]:
    """"4,8,16" -> (4, 8, 16): distinct positive ks, ascending."""
    try:
        ks = sorted({int(k) for k in spec.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ValueError(f"--k-sweep takes a comma list of positive integers such as 4,8,16, got {spec!r}")
    return tuple(ks)


def _seed_chains(source: Path, run_dir: Path, k: int) -> None:
    """run_dir/initial.jsonl from the first k chains of each of source's rows, unless run_dir has one."""
    target = run_dir / "initial.jsonl"
    if target.exists() or not (source / "initial.jsonl").exists():
        return
    rows = JsonlLog(source / "initial.jsonl").read()
    JsonlLog(target).write([{**row, "chains": row["chains"][:k]} for row in rows])  # whole or absent after a kill


async def k_sweep(task: Task, questions: list[Question], agents: Agents, rms: RewardModels,
                  config: MagicoreRunConfig, ks: tuple[int, ...], out: Path, concurrency: int,
                  log: Callable[[str], None]) -> dict[str, list[tuple[int, float]]] | None:
    """method -> (k, accuracy) for every k of `ks`, ascending; None when some run's solve phase
    is incomplete (rerun to retry it). `config` and `out` are the main run's."""
    accuracy: dict[int, dict[str, float]] = {}
    source, largest = out, config.magicore.k
    for k in sorted(ks, reverse=True):
        run_dir = out / "k_sweep" / f"k-{k}"
        if k <= largest:
            _seed_chains(source, run_dir, k)
        run = dataclasses.replace(config, magicore=dataclasses.replace(config.magicore, k=k),
                                  baselines=SWEEP_BASELINES, baseline_k=None)
        summary = await Runner(task, questions, agents, rms, run, run_dir, concurrency, log).run()
        if summary is None:
            return None
        methods = {m["method"]: m["accuracy"] for m in summary["methods"]}
        accuracy[k] = {MAGICORE: summary["iterations"][-1]["accuracy"],
                       **{METHOD_NAMES[b]: methods[METHOD_NAMES[b]] for b in SWEEP_BASELINES}}
        if k > largest:
            source, largest = run_dir, k
    return {method: [(k, accuracy[k][method]) for k in sorted(accuracy)] for method in accuracy[ks[0]]}
