"""What `python -m scoreflow.aflow` and `python -m scoreflow.adas` share, in the order a run
goes through it (`main`): flags from the method's settings dataclass over its embedded preset
(`parse`); the checks before anything is written (the task's data, both endpoints answering or both local
models found); the run directory, locked, with its settings stored so that a resume cannot mix
others in; the two endpoints (served here on loopback when no URL is given) and their clients;
and OUT/best_workflow.py, replaced atomically whenever the best candidate changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from ..cli import Parser, Preset, add_flags, given
from ..executor import ExecutorClient
from ..llama.registry import DEFAULT_MODEL
from ..optimize.config import RunConfig, check_model, stored_settings
from ..optimize.endpoint import executor_endpoint
from ..rundir import check_stored_settings, run_lock, save_or_check_settings
from ..tasks import Task, load_task
from ..tasks.registry import smaller_than_the_paper
from .config import SearchConfig

OPTIMIZER_CONTEXT = 16384  # tokens of the embedded optimiser: the guide, ADAS's archive, a generation's replies
OPTIMIZER_TIMEOUT_S = 900.0  # one optimiser request; the embedded one writes ~10 tokens/s on 2 cores
BEST_WORKFLOW = "best_workflow.py"

Search = Callable[[Any, Task, Path, ExecutorClient, ExecutorClient], Awaitable[dict]]


def main(prog: str, doc: str, cls: type[SearchConfig], preset: Preset, argv: list[str] | None = None) -> dict:
    """`python -m scoreflow.<method>` for method `prog.split('.')[-1]`, a module of this package
    whose `search` is imported (with torch, slow) only once the settings are checked."""
    cfg, out = parse(prog, doc, cls, preset, argv)
    search = importlib.import_module(f"{__package__}.{prog.split('.')[-1]}").search
    return run(prog, cfg, out, preset, search)


def parse(prog: str, doc: str, cls: type[SearchConfig], preset: Preset,
          argv: list[str] | None = None) -> tuple[SearchConfig, Path]:
    """The settings (paper defaults -> the embedded preset where it applies -> the flags) and OUT."""
    p = Parser(prog=f"python -m {prog}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=f"Run directory; rerun the same command to resume it (default: "
                                 f"runs/{prog.split('.')[-1]}-TASK).")
    add_flags(p, cls, preset=preset.settings, like=RunConfig)
    a = vars(p.parse_args(argv))
    cfg = preset.resolve(cls, given(a, cls))
    return cfg, Path(a["out"] or f"runs/{prog.split('.')[-1]}-{cfg.task}")


def run(prog: str, cfg: SearchConfig, out: Path, preset: Preset, search: Search) -> dict:
    """Check, then run (or resume) `search` in OUT, holding its lock; returns what `search` returns."""
    task = load_task(cfg.task, cfg.split, cfg.data_dir)
    in_force = preset.in_force(cfg)
    settings = {**stored_settings(cfg), "method": prog, "preset": in_force}
    check_stored_settings(out, settings)  # a resume with other flags fails before any model loads
    check_endpoints(cfg)
    with run_lock(out):
        save_or_check_settings(out, settings)
        print(f"{prog}: settings: {in_force}", file=sys.stderr)
        if note := smaller_than_the_paper(task, cfg.split):
            print(f"{prog}: note: {note}", file=sys.stderr)
        task = replace(task, questions=task.questions[: cfg.limit])
        print(f"{prog}: {cfg.task}/{cfg.split}, {len(task.questions)} questions, {cfg.rounds} rounds, {cfg.runs} "
              f"run(s) per candidate, optimiser {cfg.optimizer[1]} -> {out}", file=sys.stderr)
        with endpoints(cfg) as (optimizer_url, executor_url):
            return asyncio.run(_with_clients(search, cfg, task, out, optimizer_url, executor_url))


def check_endpoints(cfg: SearchConfig) -> None:
    """One line now, not an hour later, for an executor or optimiser the run could not use."""
    patience = dict(api_key=cfg.api_key, timeout_s=cfg.preflight_timeout)
    check_model(cfg.executor_url, "--executor-url", cfg.executor_model or DEFAULT_MODEL, **patience)
    url, model = cfg.optimizer
    if cfg.optimizer_url or url is None:  # the executor's endpoint otherwise, checked above
        check_model(url, "--optimizer-url", model, **patience)


@contextlib.contextmanager
def endpoints(cfg: SearchConfig) -> Iterator[tuple[str, str]]:
    """(optimiser URL, executor URL) for the block; a model without a URL is served on loopback."""
    url, model = cfg.optimizer
    with executor_endpoint(cfg.executor_url, cfg.executor_model) as executor_url:
        if url is not None:
            yield url, executor_url
            return
        from ..engine.local import serve_locally  # torch and the model only when we serve one

        with serve_locally(model, max_batch=1, max_seq_len=OPTIMIZER_CONTEXT, who="optimizer") as server:
            yield server.base_url, executor_url


async def _with_clients(search: Search, cfg: SearchConfig, task: Task, out: Path, optimizer_url: str,
                        executor_url: str) -> dict:
    optimizer_client = ExecutorClient(optimizer_url, cfg.optimizer[1], api_key=cfg.api_key, max_concurrency=1,
                                      timeout=OPTIMIZER_TIMEOUT_S)
    executor_client = ExecutorClient(executor_url, cfg.executor_model or DEFAULT_MODEL, api_key=cfg.api_key,
                                     max_concurrency=cfg.executor_concurrency, cache_dir=out / "executor_cache",
                                     default_max_tokens=cfg.executor_max_tokens)
    async with optimizer_client, executor_client:
        return await search(cfg, task, out, optimizer_client, executor_client)


def write_best(out: Path, code: str) -> None:
    """OUT/best_workflow.py := `code`, atomically (`evaluate --workflows NAME=FILE` reads it)."""
    tmp = out / (BEST_WORKFLOW + ".tmp")
    tmp.write_text(code.rstrip("\n") + "\n")
    os.replace(tmp, out / BEST_WORKFLOW)
