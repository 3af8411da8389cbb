"""`python -m scoreflow.magicore`: MAgICoRE and its baselines on one dataset, resumable.

    python -m scoreflow.magicore --dataset gsm8k --limit 20 --k 8 --iters 3 --out runs/magicore-gsm8k
    python -m scoreflow.magicore --dataset math --solver-url https://api.openai.com/v1 \\
        --solver-model gpt-4o-mini --orm judge --prm judge --out runs/math-4o-mini

Without --solver-url our own OpenAI-compatible server (scoreflow.engine) is started on
loopback over --model and stopped at the end. --orm/--prm take a model name or an HF-format
directory of a causal LM (reward.LocalLMRewardModel; the default chat model is only a weak
stand-in) or "judge" (the Solver's endpoint scores, judge.JudgeRewardModel). Rerunning the
same command resumes from OUT; the results table is printed and written to OUT/results.md
and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from scoreflow.cli import run_cli
from scoreflow.engine.local import serve_locally
from scoreflow.executor import ExecutorClient
from scoreflow.executor.reachable import require_reachable
from scoreflow.llama import DEFAULT_MODEL
from scoreflow.llama.registry import resolve_model_dir
from scoreflow.tasks import Question, Task, load_task

from .agents import Agents, Sampling
from .answers import DATASETS, answer_format
from .baselines import BASELINES, SELF_REFINE_ROUNDS
from .judge_rm import JudgeRewardModel
from .loop import ABLATIONS, MagicoreConfig
from .reward import LocalLMRewardModel, RewardModels
from .runner import MagicoreRunConfig, Runner

LOCAL_TIMEOUT_S = 3600.0   # a CPU server may take minutes per long completion; never retry those early
LOCAL_CONTEXT = 4096       # Refiner prompts hold the question, a chain and its feedback
LOCAL_BATCH = 16           # Solver chains decoded together on our own server
EMBEDDED_K = 8             # Solver chains on our own CPU server: 40 chains of a 135M model cost minutes each


def parse_baselines(spec: str) -> tuple[str, ...]:
    """"all", "none", or a comma-separated subset of BASELINES."""
    if spec in ("all", "none"):
        return BASELINES if spec == "all" else ()
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from all, none, {', '.join(BASELINES)}")
    return names


def reward_models(orm: str, prm: str, executor: ExecutorClient, loaded: dict[str, tuple]) -> RewardModels:
    """The ORM and PRM named on the command line; one object where both names agree, and a
    model already loaded for the server is reused, not loaded twice."""
    built: dict[str, Any] = {}
    for spec in (orm, prm):
        if spec not in built:
            if spec == "judge":
                built[spec] = JudgeRewardModel(executor)
            elif spec in loaded:
                built[spec] = LocalLMRewardModel.from_loaded(*loaded[spec])
            else:
                built[spec] = LocalLMRewardModel(spec)
    return RewardModels(built[orm], built[prm])


def main(dataset: str, out: str | os.PathLike, limit: int | None = None, k: int | None = None, iters: int = 3,
         solver_url: str | None = None, solver_model: str | None = None, api_key: str | None = None,
         model: str = DEFAULT_MODEL, orm: str = DEFAULT_MODEL, prm: str = DEFAULT_MODEL,
         data_dir: str | None = None, baselines: str = "all", temperature: float = 0.8, top_p: float = 0.95,
         max_tokens: int = 1000, seed: int | None = None, normalization: str = "dataset",
         self_refine_rounds: int = SELF_REFINE_ROUNDS, concurrency: int = 4, ablation: str = "none") -> dict | None:
    """Run MAgICoRE and the baselines; returns the summary (report.summarize), or None when
    some questions still need their Solver chains (rerun to retry them). `k` None: the
    reference's 40 with a --solver-url, the embedded preset's EMBEDDED_K on our own server."""
    if k is None:
        k = MagicoreConfig.k if solver_url is not None else EMBEDDED_K
    fmt = answer_format(dataset)
    task = load_task(fmt.task, "test", data_dir)
    questions = task.questions[:limit] if limit is not None else task.questions
    if not questions:
        raise ValueError(f"no questions to run (--limit {limit}); pass --limit 1 or more")
    if solver_url is not None and not solver_model:
        raise ValueError("--solver-url needs --solver-model (the model name that endpoint serves)")
    if solver_url is not None:
        require_reachable(solver_url, "--solver-url")
    for name in {model if solver_url is None else None, orm, prm} - {None, "judge"}:
        resolve_model_dir(name)  # an unknown model fails now, in one line, not after the server started
    config = MagicoreRunConfig(dataset, len(questions), MagicoreConfig(k, iters, normalization, ablation),
                               Sampling(temperature, top_p, max_tokens, seed), parse_baselines(baselines),
                               self_refine_rounds, solver_model or str(model), orm, prm)
    with contextlib.ExitStack() as stack:
        loaded: dict[str, tuple] = {}
        if solver_url is None:
            server = stack.enter_context(serve_locally(model, max_batch=LOCAL_BATCH, max_seq_len=LOCAL_CONTEXT,
                                                       who="scoreflow.magicore"))
            solver_url, loaded[str(model)] = server.base_url, (server.engine.model, server.engine.tokenizer)
        summary = asyncio.run(_run(task, questions, config, solver_url, config.solver, api_key, loaded, Path(out),
                                   concurrency, timeout=LOCAL_TIMEOUT_S if loaded else 120.0))
    if summary is not None:
        print("\n" + summary["markdown"], flush=True)
    return summary


async def _run(task: Task, questions: list[Question], config: MagicoreRunConfig, url: str, model: str,
               api_key: str | None, loaded: dict[str, tuple], out: Path, concurrency: int,
               timeout: float) -> dict | None:
    async with ExecutorClient(url, model, api_key, max_concurrency=16, timeout=timeout) as executor:
        rms = reward_models(config.orm, config.prm, executor, loaded)
        agents = Agents(executor, answer_format(config.dataset), config.sampling)
        summary = await Runner(task, questions, agents, rms, config, out, concurrency,
                               log=lambda line: print(line, flush=True)).run()
        for rm in {id(r): r for r in (rms.orm, rms.prm)}.values():
            if isinstance(rm, JudgeRewardModel):
                print(f"judge: {rm.calls} calls, {rm.unparsed} scores unreadable (scored 0.5)", flush=True)
        usage = executor.usage
        print(f"executor: {usage.requests} requests ({usage.retries} retries, {usage.errors} errors), "
              f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens", flush=True)
        return summary


def _arguments() -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m scoreflow.magicore", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS, help="MAgICoRE evaluation set (the test split).")
    ap.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    ap.add_argument("--limit", type=int, help="first N questions of the test set")
    ap.add_argument("--k", type=int, help=f"Solver chains per question (default: {MagicoreConfig.k}, the "
                                          f"reference's; embedded preset, without --solver-url: {EMBEDDED_K})")
    ap.add_argument("--iters", type=int, default=3, help="maximum refinement iterations T (default: 3, the reference's)")
    ap.add_argument("--ablation", choices=ABLATIONS, default="none",
                    help="none = MAgICoRE; refine-all = every question is hard; cond1-only / cond2-only = easy on one "
                         "difficulty condition alone; no-review = no Reviewer, the Refiner alone")
    ap.add_argument("--solver-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                                         "(default: start our own server over --model)")
    ap.add_argument("--solver-model", help="model name at --solver-url")
    ap.add_argument("--api-key", help="API key for --solver-url (default: $OPENAI_API_KEY)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model our own server loads (name or HF directory)")
    ap.add_argument("--orm", default=DEFAULT_MODEL, help='causal-LM name or HF directory, or "judge"')
    ap.add_argument("--prm", default=DEFAULT_MODEL, help='causal-LM name or HF directory (Math-Shepherd), or "judge"')
    ap.add_argument("--data-dir", help="folder containing magicore/ (default: $SCOREFLOW_DATA, else the copy "
                                       "shipped in the package)")
    ap.add_argument("--baselines", default="all", help=f"all, none, or a comma list of {', '.join(BASELINES)}")
    ap.add_argument("--temperature", type=float, default=0.8, help="Solver sampling temperature (reference: 0.8)")
    ap.add_argument("--top-p", type=float, default=0.95, help="Solver nucleus threshold (reference: 0.95)")
    ap.add_argument("--max-tokens", type=int, default=1000, help="per Solver/Reviewer/Refiner call")
    ap.add_argument("--seed", type=int, help="base seed: each call gets its own, derived from it")
    ap.add_argument("--normalization", choices=("dataset", "question"), default="dataset",
                    help="condition-1 statistics: each question's first chain over the dataset (reference), "
                         "or the question's own chains")
    ap.add_argument("--self-refine-rounds", type=int, default=SELF_REFINE_ROUNDS,
                    help="rounds of the Self-Refine baselines")
    ap.add_argument("--concurrency", type=int, default=4, help="questions in flight at once")
    return vars(ap.parse_args())


if __name__ == "__main__":
    run_cli("scoreflow.magicore", lambda: main(**_arguments()))
