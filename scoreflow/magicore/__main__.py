"""`python -m scoreflow.magicore`: MAgICoRE and its baselines on one dataset, resumable.

    python -m scoreflow.magicore --task gsm8k --limit 20 --k 8 --iterations 3 --out runs/magicore-gsm8k
    python -m scoreflow.magicore --task math --executor-url https://api.openai.com/v1 \\
        --executor-model gpt-4o-mini --orm judge --prm judge --out runs/math-4o-mini

The executor runs the Solver, Reviewer and Refiner. Without --executor-url our own
OpenAI-compatible server (scoreflow.engine) serves --executor-model on loopback and stops at the
end; that is the embedded preset, with fewer Solver chains per question. --orm/--prm take a model
name or an HF-format directory of a causal LM (local_rm.LocalLMRewardModel; the default chat model
is only a weak stand-in) or "judge" (the executor scores, judge.JudgeRewardModel). Rerunning the
same command resumes from OUT; the results table is printed and written to OUT/results.md and
OUT/summary.json. The flags are scoreflow.train's where they mean the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreflow.cli import Preset, add_flags, flag, given, run_cli
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
from .reward import RewardModels
from .runner import MagicoreRunConfig, Runner

LOCAL_TIMEOUT_S = 3600.0   # a CPU server may take minutes per long completion; never retry those early
LOCAL_CONTEXT = 4096       # Refiner prompts hold the question, a chain and its feedback
LOCAL_BATCH = 16           # Solver chains decoded together on our own server


@dataclass(frozen=True)
class MagicoreSettings:
    """Every flag of `python -m scoreflow.magicore` but --out; defaults are the reference's (SPEC B)."""

    task: str = flag("gsm8k", "MAgICoRE evaluation set (its test split).", choices=DATASETS, aliases=("--dataset",))
    data_dir: str | None = flag(None, "Folder holding magicore/ (default: $SCOREFLOW_DATA, else the copy shipped in "
                                      "the package).")
    limit: int | None = flag(None, "Use only the first N questions (default: all).")
    k: int = flag(MagicoreConfig.k, "Solver chains per question.")
    iterations: int = flag(MagicoreConfig.iterations, "Refinement iterations T at most.", aliases=("--iters",))
    ablation: str = flag("none", "none = MAgICoRE; refine-all = every question is hard; cond1-only / cond2-only = "
                                 "easy on one difficulty condition alone; no-review = the Refiner without the "
                                 "Reviewer.", choices=ABLATIONS)
    normalization: str = flag("dataset", "Condition-1 statistics: each question's first chain over the dataset (the "
                                         "reference), or the question's own chains.", choices=("dataset", "question"))
    executor_url: str | None = flag(None, "OpenAI-compatible chat endpoint of the Solver, Reviewer and Refiner "
                                          "(default: our own server on loopback).", aliases=("--solver-url",))
    executor_model: str | None = flag(None, "Model name at --executor-url (required with it); without it, the model "
                                            "our server loads: a known name or an HF-format directory (default: "
                                            f"{DEFAULT_MODEL}).", aliases=("--solver-model", "--model"))
    api_key: str | None = flag(None, "API key for --executor-url (default: $OPENAI_API_KEY); never written to disk.",
                               compare=False, repr=False)
    executor_concurrency: int = flag(16, "Executor requests in flight at once.")
    question_concurrency: int = flag(4, "Questions in flight at once.", aliases=("--concurrency",))
    orm: str = flag(DEFAULT_MODEL, 'Outcome reward model: a causal-LM name or HF-format directory, or "judge".')
    prm: str = flag(DEFAULT_MODEL, 'Process reward model: a causal-LM name or HF-format directory (Math-Shepherd), '
                                   'or "judge".')
    baselines: str = flag("all", f"all, none, or a comma list of {', '.join(BASELINES)}.")
    self_refine_rounds: int = flag(SELF_REFINE_ROUNDS, "Rounds of the Self-Refine baselines.")
    temperature: float = flag(0.8, "Solver sampling temperature.")
    top_p: float = flag(0.95, "Solver nucleus (top-p) sampling threshold.")
    max_new_tokens: int = flag(1000, "Completion tokens per Solver, Reviewer or Refiner call at most.",
                               aliases=("--max-tokens",))
    seed: int | None = flag(None, "Base seed: each call gets its own, derived from it.")

    @property
    def embedded(self) -> bool:
        return self.executor_url is None


# The embedded preset: on our own CPU server, 40 chains of a small model cost minutes per question.
EMBEDDED = Preset({"k": 8}, applies=lambda settings: settings.embedded)


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
    from .local_rm import LocalLMRewardModel  # torch (~2 s): only once the flags are checked

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


def main(settings: MagicoreSettings, out: Path) -> dict | None:
    """Run MAgICoRE and the baselines; returns the summary (report.summarize), or None when
    some questions still need their Solver chains (rerun to retry them)."""
    fmt = answer_format(settings.task)
    task = load_task(fmt.task, "test", settings.data_dir)
    questions = task.questions[: settings.limit] if settings.limit is not None else task.questions
    if not questions:
        raise ValueError(f"no questions to run (--limit {settings.limit}); pass --limit 1 or more")
    url, model = settings.executor_url, settings.executor_model or DEFAULT_MODEL
    if url is not None and settings.executor_model is None:
        raise ValueError("--executor-url needs --executor-model (the model name that endpoint serves)")
    if url is not None:
        require_reachable(url, "--executor-url")
    for name in {model if url is None else None, settings.orm, settings.prm} - {None, "judge"}:
        resolve_model_dir(name)  # an unknown model fails now, in one line, not after the server started
    config = MagicoreRunConfig(settings.task, len(questions),
                               MagicoreConfig(settings.k, settings.iterations, settings.normalization, settings.ablation),
                               Sampling(settings.temperature, settings.top_p, settings.max_new_tokens, settings.seed),
                               parse_baselines(settings.baselines), settings.self_refine_rounds,
                               str(model), settings.orm, settings.prm, EMBEDDED.in_force(settings))
    print(f"scoreflow.magicore: settings: {config.preset}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        loaded: dict[str, tuple] = {}
        if url is None:
            from scoreflow.engine.local import serve_locally  # torch and the model only when we serve one

            server = stack.enter_context(serve_locally(model, max_batch=LOCAL_BATCH,
                                                       max_seq_len=LOCAL_CONTEXT, who="scoreflow.magicore"))
            url, loaded[config.solver] = server.base_url, (server.engine.model, server.engine.tokenizer)
        summary = asyncio.run(_run(task, questions, config, url, settings, loaded, out))
    if summary is not None:
        print("\n" + summary["markdown"], flush=True)
    return summary


async def _run(task: Task, questions: list[Question], config: MagicoreRunConfig, url: str,
               settings: MagicoreSettings, loaded: dict[str, tuple], out: Path) -> dict | None:
    timeout = LOCAL_TIMEOUT_S if loaded else 120.0
    async with ExecutorClient(url, config.solver, settings.api_key, max_concurrency=settings.executor_concurrency,
                              timeout=timeout) as executor:
        rms = reward_models(config.orm, config.prm, executor, loaded)
        agents = Agents(executor, answer_format(config.dataset), config.sampling)
        summary = await Runner(task, questions, agents, rms, config, out, settings.question_concurrency,
                               log=lambda line: print(line, flush=True)).run()
        for rm in {id(r): r for r in (rms.orm, rms.prm)}.values():
            if isinstance(rm, JudgeRewardModel):
                print(f"judge: {rm.calls} calls, {rm.unparsed} scores unreadable (scored 0.5)", flush=True)
        usage = executor.usage
        print(f"executor: {usage.requests} requests ({usage.retries} retries, {usage.errors} errors), "
              f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens", flush=True)
        return summary


def parse_args(argv: list[str] | None = None) -> tuple[MagicoreSettings, Path]:
    p = argparse.ArgumentParser(prog="python -m scoreflow.magicore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="Run directory; rerun the same command to resume it (default: runs/magicore-TASK).")
    add_flags(p, MagicoreSettings, preset=EMBEDDED.settings)
    a = vars(p.parse_args(argv))
    settings = EMBEDDED.resolve(MagicoreSettings, given(a, MagicoreSettings))
    return settings, Path(a["out"] or f"runs/magicore-{settings.task}")


if __name__ == "__main__":
    run_cli("scoreflow.magicore", lambda: main(*parse_args()))
