"""`python -m scoreflow.train`: the ScoreFlow optimisation loop (PAPERS.md §S4), resumable.

    python -m scoreflow.train                       # the embedded preset: a small CPU run
    python -m scoreflow.train --task math --generator /models/Llama-3.1-8B-Instruct \\
        --executor-url https://api.openai.com/v1 --executor-model gpt-4o-mini --out runs/math

Each iteration: k workflows per question from the generator -> each valid workflow run R
times by the executor and scored -> pairs with s_w > s_l, N drawn from P* ∝ (s_w - s_l)^3 ->
Score-DPO on the generator's LoRA -> the next iteration samples from the updated generator.
Rerun the same command after a crash or kill: finished work is read back, not redone.

Defaults are the paper's (PAPERS.md §S4). When both models are ours and local (an embedded generator,
a known model name, by default Qwen2.5-Coder-0.5B-Instruct; no --generator-url and no
--executor-url), the embedded preset applies instead where it differs (shown as "embedded
preset" below): 4 GSM8K questions, 2 iterations, 32 pairs, one Score-DPO step per question, and
the embedded SmolLM2-135M runs the operators, served on loopback (--executor-model names another
model to serve). A real endpoint for either model gets the paper's defaults. Any flag you give
wins over both; the first line of a run names the defaults in force.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli import Parser, add_flags, given, preset_of, run_cli
from .dpo.config import TrainConfig
from .executor import ExecutorClient
from .llama.registry import DEFAULT_MODEL
from .optimize.config import EMBEDDED, RunConfig, check_endpoints, resolve, stored_form
from .optimize import ranks
from .optimize.endpoint import executor_endpoint
from .optimize.plan import add_plan_flags, report
from .rundir import JsonlLog, check_stored_settings, run_lock, save_or_check_settings, stage_done, stage_info
from .tasks import Task, load_task
from .tasks.registry import smaller_than_the_paper


def run(cfg: RunConfig, out: Path) -> list[dict]:
    """Run (or resume) every iteration, holding OUT's lock; returns the per-iteration summary rows.
    Under torchrun, rank 0 does this and the other ranks only train (optimize/ranks.py)."""
    task = load_task(cfg.task, cfg.split, cfg.data_dir)
    task = replace(task, questions=task.questions[: cfg.limit])
    if int(os.environ.get("RANK", "0")) != 0:
        return _training_rank(cfg, task, out)
    check_stored_settings(out, *stored_form(cfg))  # a resume with other flags fails before any model is converted
    check_endpoints(cfg)
    with run_lock(out):
        save_or_check_settings(out, *stored_form(cfg))
        return _iterations(cfg, task, out)


def _iterations(cfg: RunConfig, task: Task, out: Path) -> list[dict]:
    """`run`'s iterations on its (first --limit) questions, once the settings are checked and stored."""
    from .optimize import stages  # torch (slow to import) only once the settings are checked: a typo fails at once
    from .optimize.generator import make_generator

    print(f"scoreflow.train: settings: {EMBEDDED.in_force(cfg)}", file=sys.stderr)
    if note := smaller_than_the_paper(task, cfg.split):
        print(f"scoreflow.train: note: {note}", file=sys.stderr)
    print(f"scoreflow.train: {cfg.task}/{cfg.split}, {len(task.questions)} questions, {cfg.iterations} iterations, "
          f"k={cfg.k}, runs={cfg.runs}, pairs={cfg.pairs}, invalid={cfg.invalid} -> {out}", file=sys.stderr)
    _, world = ranks.start(cfg.device)
    with executor_endpoint(cfg.executor_url, cfg.executor_model) as url:
        generator, trained_here = None, False  # trained_here: this process trained the generator in place
        rows = []
        for i in range(cfg.iterations):
            it = stages.Iteration(i, out / f"iter_{i}", cfg, task)
            adapter = out / f"iter_{i - 1}" / "adapter" if i else None
            t0 = time.monotonic()
            if generator is not None and trained_here:
                generator = generator.for_iteration(adapter)
            else:  # the first iteration, or a resumed run whose last training an earlier process did
                generator = None  # free its weights before the new ones load
                generator = make_generator(cfg, adapter)
            workflows = stages.generate(it, generator)
            t_gen = time.monotonic()
            executions, usage = asyncio.run(_execute(it, workflows, cfg, url, out))
            scores = stages.score(it, workflows, executions)
            pair_records = stages.pairs(it, workflows, scores)
            t_exec = time.monotonic()
            trained_here = not stage_done(it.dir, "train")
            history = stages.train(it, generator, workflows, pair_records)
            rows.append(_summary(it, workflows, scores, history, usage,
                                 {"generate": t_gen - t0, "execute": t_exec - t_gen, "train": time.monotonic() - t_exec}))
            JsonlLog(out / "summary.jsonl").write(rows)
    ranks.finish(world)
    print(_table(rows))
    return rows


def _training_rank(cfg: RunConfig, task: Task, out: Path) -> list[dict]:
    """A rank other than 0 under torchrun: each iteration, once rank 0 has written its pairs,
    the same Score-DPO on its share of the micro-batches (the LoRA weights stay identical)."""
    from .optimize import stages
    from .optimize.generator import LocalGenerator

    _, world = ranks.start(cfg.device)
    generator, trained_here = None, False
    for i in range(cfg.iterations):
        it = stages.Iteration(i, out / f"iter_{i}", cfg, task)
        adapter = out / f"iter_{i - 1}" / "adapter" if i else None
        ranks.wait_for_pairs(it.dir)
        if generator is None or not trained_here:  # as rank 0 makes it
            generator = None
            generator = LocalGenerator(cfg, adapter)
        trained_here = not stage_done(it.dir, "train")
        workflows, pair_records = (JsonlLog(it.dir / name).read() for name in ("workflows.jsonl", "pairs.jsonl"))
        stages.train(it, generator, workflows, pair_records)
    ranks.finish(world)
    return []


async def _execute(it, workflows, cfg: RunConfig, url: str, out: Path):
    from .optimize import stages

    model = cfg.executor_model or DEFAULT_MODEL
    async with ExecutorClient(url, model, api_key=cfg.api_key, max_concurrency=cfg.executor_concurrency,
                              cache_dir=out / "executor_cache", default_max_tokens=cfg.executor_max_tokens) as client:
        executions = await stages.execute(it, workflows, client)
        return executions, client.usage


def _summary(it, workflows, scores, history, usage, seconds) -> dict:
    valued = [s["score"] for s in scores if s["score"] is not None]
    info = stage_info(it.dir, "pairs")
    last = history[-max(1, len(history) // 4):] if history else []
    def mean(key: str) -> float | None:
        return sum(m[key] for m in last) / len(last) if last else None

    costs = [s["cost"] for s in scores if s.get("cost") is not None]
    return {"iteration": it.index, "workflows": len(workflows),
            "valid_rate": sum(w["valid"] for w in workflows) / max(1, len(workflows)),
            "mean_score": sum(valued) / len(valued) if valued else None,
            "mean_cost": sum(costs) / len(costs) if costs else None, "cost_unit": it.cfg.cost_unit,
            "candidate_pairs": info.get("candidates", 0), "pairs": info.get("drawn", 0),
            "loss": mean("loss"), "reward_margin": mean("reward_margin"),
            "executor_tokens": usage.prompt_tokens + usage.completion_tokens,
            "executor_requests": usage.requests, "cache_hits": usage.cache_hits,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def _table(rows: list[dict]) -> str:
    def fmt(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    unit = rows[0]["cost_unit"] if rows else "tokens"
    lines = ["| iter | mean workflow score | valid rate | pairs (candidates) | loss (last quarter) | reward margin "
             f"| executor tokens (this process) | {unit} / workflow run | time gen/exec/train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"| {r['iteration']} | {fmt(r['mean_score'], '.3f')} | {r['valid_rate']:.2f} | {r['pairs']} "
                     f"({r['candidate_pairs']}) | {fmt(r['loss'], '.4f')} | {fmt(r['reward_margin'], '+.4f')} | "
                     f"{r['executor_tokens']} | {fmt(r.get('mean_cost'), '.4g')} | "
                     f"{s['generate']:.0f}/{s['execute']:.0f}/{s['train']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[dict, dict, Path, tuple[bool, int | None]]:
    p = Parser(prog="python -m scoreflow.train", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="Run directory; rerun the same command to resume it "
                                               "(default: runs/scoreflow-TASK).")
    add_plan_flags(p)
    add_flags(p, RunConfig, preset=EMBEDDED.settings)
    add_flags(p.add_argument_group("Score-DPO"), TrainConfig, preset=preset_of(EMBEDDED.settings["dpo"]), dest_prefix="dpo_")
    a = vars(p.parse_args(argv))
    overrides, dpo = given(a, RunConfig), given(a, TrainConfig, dest_prefix="dpo_")
    out = Path(a["out"] or f"runs/scoreflow-{overrides.get('task', 'gsm8k')}")
    if a["memory_budget"] is not None and not a["plan"]:
        p.error("--memory-budget goes with --plan")
    return overrides, dpo, out, (a["plan"], a["memory_budget"])


def main(argv: list[str] | None = None) -> None:
    overrides, dpo, out, (show_plan, budget) = parse_args(argv)
    cfg = resolve(overrides, dpo)
    if show_plan:
        print(report(cfg, budget))
        return
    run(cfg, out)


if __name__ == "__main__":
    run_cli("scoreflow.train", main)
