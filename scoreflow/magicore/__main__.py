"""`python -m scoreflow.magicore`: MAgICoRE and its baselines on one dataset, resumable.

    python -m scoreflow.magicore --task gsm8k --limit 20 --k 8 --iterations 3 --out runs/magicore-gsm8k
    python -m scoreflow.magicore --task math --executor-url https://api.openai.com/v1 \\
        --executor-model gpt-4o-mini --orm judge --prm judge --out runs/math-4o-mini
    python -m scoreflow.magicore --limit 20 --baseline-k 24 --k-sweep 2,4,8 --out runs/magicore-gsm8k

Besides the tables, a run draws the MAgICoRE paper's figures (with the [plot] extra):
OUT/iterations.png, accuracy per refinement round of MAgICoRE, Best-of-k and Self-Refine + SC,
and with --k-sweep OUT/k_sweep.png, accuracy against k of MAgICoRE, k-way self-consistency and
Best-of-k (sweep.py). --difficulty-rule reference runs the authors' repository's rule instead of
the paper's; --baseline-k N adds self-consistency and Best-of-N on N samples of their own.

The executor runs the Solver, Reviewer and Refiner. Without --executor-url our own
OpenAI-compatible server (scoreflow.engine) serves --executor-model on loopback and stops at the
end; that is the embedded preset, with fewer Solver chains per question. --orm/--prm take a model
name or an HF-format directory (a value-head ORM, value_head_rm.ValueHeadRewardModel; a causal LM,
local_rm.LocalLMRewardModel), "judge" (the executor scores, judge_rm.JudgeRewardModel) or "embedded"
(the default chat model, a weak stand-in: the default without --executor-url; with it both flags
are required). Rerunning the same command resumes from OUT; the results table is printed and
written to OUT/results.md and OUT/summary.json. The flags are scoreflow.train's where they mean
the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from scoreflow.cli import CONCURRENCY, SEED, Parser, Preset, add_flags, check_settings, flag, given, run_cli
from scoreflow.engine.sampling_ranges import MAX_TOKENS, TEMPERATURE, TOP_P
from scoreflow.executor import ExecutorClient
from scoreflow.executor.reachable import PREFLIGHT_TIMEOUT, require_answering
from scoreflow.llama import DEFAULT_MODEL
from scoreflow.llama.registry import resolve_model_dir
from scoreflow.rundir import check_stored_settings, run_lock
from scoreflow.tasks import Question, Task, load_task

from .agents import Agents, Sampling
from .answers import DATASETS, answer_format
from .baselines import BASELINES, MATCHED_BASELINES
from .difficulty import RULES
from .judge_rm import JudgeRewardModel
from .loop import ABLATIONS, MagicoreConfig
from .report import write_figures
from .reward import RewardModels
from .runner import MagicoreRunConfig, Runner, stored_form
from .sweep import k_sweep, parse_ks

LOCAL_TIMEOUT_S = 3600.0   # a CPU server may take minutes per long completion; never retry those early
LOCAL_CONTEXT = 4096       # Refiner prompts hold the question, a chain and its feedback
LOCAL_BATCH = 16           # Solver chains decoded together on our own server
EMBEDDED_RM = "embedded"   # --orm/--prm value: the default chat model as a (weak) stand-in reward model


@dataclass(frozen=True)
class MagicoreSettings:
    """Every flag of `python -m scoreflow.magicore` but --out; defaults are the MAgICoRE paper's."""

    task: str = flag("gsm8k", "MAgICoRE evaluation set (its test split).", choices=DATASETS, aliases=("--dataset",))
    data_dir: str | None = flag(None, "Folder holding magicore/ (default: $SCOREFLOW_DATA, else the copy shipped in "
                                      "the package).")
    limit: int | None = flag(None, "Use only the first N questions (default: all).", bounds=(1, 10**7),
                             none_as="all")
    k: int = flag(MagicoreConfig.k, "Solver chains per question.", bounds=(1, 1024))
    iterations: int = flag(MagicoreConfig.iterations, "Refinement iterations T at most.", aliases=("--iters",),
                           bounds=(0, 100))
    ablation: str = flag("none", "none = MAgICoRE; the paper's variants: refine-all = every question is hard; "
                                 "cond1-only / cond2-only = easy on one difficulty condition alone; orm-only / "
                                 "prm-only = the conditions judged by one RM; llm-difficulty = the Solver's model "
                                 "says whether the question is hard; no-review = the Refiner without the Reviewer; "
                                 "llm-feedback = the Reviewer without PRM step scores; joint-role = one agent "
                                 "reviews and refines in one call.", choices=ABLATIONS)
    difficulty_rule: str = flag("paper", "paper = condition 1 per RM (the majority's mean score above the mean of "
                                         "all chains, for the ORM and the PRM) and the top k by ORM; reference = "
                                         "the authors' repository: one combined reward ORM + PRM product, "
                                         "z-normalised, for condition 1 and the top k.", choices=RULES)
    normalization: str = flag("dataset", "The reference rule's condition-1 statistics: each question's first chain "
                                         "over the dataset (the reference), or the question's own chains.",
                              choices=("dataset", "question"))
    executor_url: str | None = flag(None, "OpenAI-compatible chat endpoint of the Solver, Reviewer and Refiner "
                                          "(default: our own server on loopback).", aliases=("--solver-url",))
    executor_model: str | None = flag(None, "Model name at --executor-url (required with it); without it, the model "
                                            "our server loads: a known name or an HF-format directory (default: "
                                            f"{DEFAULT_MODEL}).", aliases=("--solver-model", "--model"))
    api_key: str | None = flag(None, "API key for --executor-url (default: $OPENAI_API_KEY); never written to disk.",
                               compare=False, repr=False)
    executor_concurrency: int = flag(16, "Executor requests in flight at once.", bounds=CONCURRENCY)
    question_concurrency: int = flag(4, "Questions in flight at once.", aliases=("--concurrency",),
                                     bounds=CONCURRENCY)
    preflight_timeout: float = flag(30.0, "Seconds --executor-url gets to answer a 1-token request before the run "
                                          "starts.", bounds=PREFLIGHT_TIMEOUT)
    orm: str | None = flag(None, 'Outcome reward model: a model name or HF-format directory (a value-head ORM, '
                                 '*ForSequenceClassification, or a causal LM asked Yes/No), "judge" (the executor '
                                 f'scores) or "{EMBEDDED_RM}" (the weak stand-in {DEFAULT_MODEL}). Required with '
                                 f'--executor-url; without it, {EMBEDDED_RM}.')
    prm: str | None = flag(None, 'Process reward model: a model name or HF-format directory (a step-tag causal LM, '
                                 f'Math-Shepherd style), "judge" or "{EMBEDDED_RM}". Required with --executor-url; '
                                 f'without it, {EMBEDDED_RM}.')
    baselines: str = flag("all", f"all, none, or a comma list of {', '.join(BASELINES)} (all: "
                                 f"{', '.join(MATCHED_BASELINES)} only with --baseline-k).")
    baseline_k: int | None = flag(None, "Budget-matched baselines: self-consistency and Best-of-N over N Solver "
                                        "samples of their own (the paper: N = 120 against k = 40).", bounds=(1, 10**5))
    self_refine_rounds: int | None = flag(None, "Rounds of the Self-Refine baselines, each reported (default: "
                                                "--iterations).", bounds=(0, 100))
    k_sweep: str | None = flag(None, "A comma list of k (e.g. 4,8,16): also run MAgICoRE, k-way self-consistency "
                                     "and Best-of-k for each k, into OUT/k_sweep/, and draw OUT/k_sweep.png.")
    temperature: float = flag(0.8, "Solver sampling temperature.", bounds=TEMPERATURE)
    top_p: float = flag(0.95, "Solver nucleus (top-p) sampling threshold.", bounds=TOP_P)
    max_new_tokens: int = flag(1000, "Completion tokens per Solver, Reviewer or Refiner call at most.",
                               aliases=("--max-tokens",), bounds=MAX_TOKENS)
    seed: int | None = flag(None, "Base seed: each call gets its own, derived from it.", bounds=SEED)

    @property
    def embedded(self) -> bool:
        return self.executor_url is None

    def __post_init__(self) -> None:
        check_settings(self)
        # The stand-in reward models are chosen by name ("embedded") or, on our own server, by
        # default. A real executor gets no silent default (main refuses it): the small chat model
        # would score its chains with little signal.
        for name in ("orm", "prm"):
            if getattr(self, name) == EMBEDDED_RM or (getattr(self, name) is None and self.embedded):
                object.__setattr__(self, name, DEFAULT_MODEL)


# The embedded preset: on our own CPU server, 40 chains of a small model cost minutes per question.
EMBEDDED = Preset({"k": 8}, applies=lambda settings: settings.embedded)


def parse_baselines(spec: str, baseline_k: int | None = None) -> tuple[str, ...]:
    """"all", "none", or a comma-separated subset of BASELINES; "all" has the budget-matched
    ones only with `baseline_k`."""
    if spec in ("all", "none"):
        every = BASELINES if baseline_k is not None else tuple(b for b in BASELINES if b not in MATCHED_BASELINES)
        return every if spec == "all" else ()
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from all, none, {', '.join(BASELINES)}")
    return names


def missing_reward_models(settings: MagicoreSettings) -> str:
    """The refusal of a run on a real executor without --orm/--prm: what to pass instead."""
    missing = " and ".join(f"--{name}" for name in ("orm", "prm") if getattr(settings, name) is None)
    return (f"--executor-url without {missing}: the reward models would default to the embedded chat model "
            f"{DEFAULT_MODEL}, a weak stand-in never trained to score solutions. Pass trained ones (--orm "
            "/path/to/orm --prm /path/to/prm: a value-head ORM, a Math-Shepherd style PRM), let the executor judge "
            "(--orm judge --prm "
            f"judge), or choose the stand-in on purpose (--orm {EMBEDDED_RM} --prm {EMBEDDED_RM})")


def reward_models(orm: str, prm: str, executor: ExecutorClient, loaded: dict[str, tuple]) -> RewardModels:
    """The ORM and PRM named on the command line; one object where both names agree, and a
    model already loaded for the server is reused, not loaded twice. A directory whose config
    declares *ForSequenceClassification is a value-head ORM; as the PRM it is refused (it
    scores whole solutions, not steps) before any reward model loads."""
    # torch (slow to import): only once the flags are checked
    from scoreflow.llama.sequence_classification import is_sequence_classifier

    from .local_rm import LocalLMRewardModel
    from .value_head_rm import ValueHeadRewardModel

    def value_head(spec: str) -> bool:
        return spec != "judge" and spec not in loaded and is_sequence_classifier(resolve_model_dir(spec))

    if value_head(prm):
        raise ValueError(f"--prm {prm} is a value-head model (*ForSequenceClassification): it scores whole "
                         "solutions, not steps; pass it as --orm, and as --prm a step-tag causal LM (Math-Shepherd "
                         "style) or judge")
    built: dict[str, Any] = {}
    for spec in (orm, prm):
        if spec not in built:
            if spec == "judge":
                built[spec] = JudgeRewardModel(executor)
            elif spec in loaded:
                built[spec] = LocalLMRewardModel.from_loaded(*loaded[spec])
            elif value_head(spec):
                built[spec] = ValueHeadRewardModel(spec)
            else:
                built[spec] = LocalLMRewardModel(spec)
    return RewardModels(built[orm], built[prm])


def main(settings: MagicoreSettings, out: Path) -> dict | None:
    """Run MAgICoRE and the baselines; returns the summary (report.summarize), or None when
    some questions still need their Solver chains (rerun to retry them)."""
    fmt = answer_format(settings.task)
    task = load_task(fmt.task, "test", settings.data_dir)
    questions = task.questions[: settings.limit]
    url, model = settings.executor_url, settings.executor_model or DEFAULT_MODEL
    if url is not None and settings.executor_model is None:
        raise ValueError("--executor-url needs --executor-model (the model name that endpoint serves)")
    if settings.orm is None or settings.prm is None:  # only with --executor-url: MagicoreSettings.__post_init__
        raise ValueError(missing_reward_models(settings))
    config = MagicoreRunConfig(settings.task, len(questions),
                               MagicoreConfig(settings.k, settings.iterations, settings.normalization,
                                              settings.ablation, settings.difficulty_rule),
                               Sampling(settings.temperature, settings.top_p, settings.max_new_tokens, settings.seed),
                               parse_baselines(settings.baselines, settings.baseline_k), settings.self_refine_rounds,
                               str(model), settings.orm, settings.prm, EMBEDDED.in_force(settings), settings.baseline_k)
    check_stored_settings(out, *stored_form(config))  # a resume with other flags fails before any model loads
    if url is not None:
        require_answering(url, "--executor-url", model, api_key=settings.api_key, timeout_s=settings.preflight_timeout)
    for name in {model if url is None else None, settings.orm, settings.prm} - {None, "judge"}:
        resolve_model_dir(name)  # an unknown model fails now, in one line, not after the server started
    ks = parse_ks(settings.k_sweep) if settings.k_sweep else ()
    with contextlib.ExitStack() as stack:
        stack.enter_context(run_lock(out))
        print(f"scoreflow.magicore: settings: {config.preset}", file=sys.stderr, flush=True)
        loaded: dict[str, tuple] = {}
        if url is None:
            from scoreflow.engine.local import serve_locally  # torch and the model only when we serve one

            server = stack.enter_context(serve_locally(model, max_batch=LOCAL_BATCH,
                                                       max_seq_len=LOCAL_CONTEXT, who="scoreflow.magicore"))
            url, loaded[config.solver] = server.base_url, (server.engine.model, server.engine.tokenizer)
        summary, sweep = asyncio.run(_run(task, questions, config, url, settings, loaded, out, ks))
    if summary is not None:
        print("\n" + summary["markdown"], flush=True)
        write_figures(summary, sweep, out)
    return summary


async def _run(task: Task, questions: list[Question], config: MagicoreRunConfig, url: str,
               settings: MagicoreSettings, loaded: dict[str, tuple], out: Path, ks: tuple[int, ...]
               ) -> tuple[dict | None, dict | None]:
    """The run's summary and, for the ks of --k-sweep, its accuracies (sweep.k_sweep); None for
    what is incomplete."""
    timeout = LOCAL_TIMEOUT_S if loaded else 120.0
    async with ExecutorClient(url, config.solver, settings.api_key, max_concurrency=settings.executor_concurrency,
                              timeout=timeout) as executor:
        rms = reward_models(config.orm, config.prm, executor, loaded)
        agents = Agents(executor, answer_format(config.dataset), config.sampling)
        log, sweep = partial(print, flush=True), None
        summary = await Runner(task, questions, agents, rms, config, out, settings.question_concurrency, log).run()
        if summary is not None and ks:
            sweep = await k_sweep(task, questions, agents, rms, config, ks, out, settings.question_concurrency, log)
        for rm in {id(r): r for r in (rms.orm, rms.prm)}.values():
            if isinstance(rm, JudgeRewardModel):
                print(f"judge: {rm.calls} calls, {rm.unparsed} scores unreadable (scored 0.5)", flush=True)
        usage = executor.usage
        print(f"executor: {usage.requests} requests ({usage.retries} retries, {usage.errors} errors), "
              f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens", flush=True)
        return summary, sweep


def parse_args(argv: list[str] | None = None) -> tuple[MagicoreSettings, Path]:
    p = Parser(prog="python -m scoreflow.magicore", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="Run directory; rerun the same command to resume it (default: runs/magicore-TASK).")
    add_flags(p, MagicoreSettings, preset=EMBEDDED.settings)
    a = vars(p.parse_args(argv))
    settings = EMBEDDED.resolve(MagicoreSettings, given(a, MagicoreSettings))
    return settings, Path(a["out"] or f"runs/magicore-{settings.task}")


if __name__ == "__main__":
    run_cli("scoreflow.magicore", lambda: main(*parse_args()))
