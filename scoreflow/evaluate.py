"""`python -m scoreflow.evaluate`: the trained generator against the untrained one and the baselines.

    python -m scoreflow.evaluate --task gsm8k --adapter runs/scoreflow-gsm8k/iter_1/adapter --limit 10
    python -m scoreflow.evaluate --task math --generator /models/Llama-3.1-8B-Instruct \\
        --adapter runs/math/iter_2/adapter --executor-url https://api.openai.com/v1 \\
        --executor-model gpt-4o-mini --out runs/math-eval

Inference as in the paper (PAPERS.md §S4): one workflow per test question from the generator
(sampled as in training; an invalid one is resampled up to --max-resample times, and a
question left without a valid workflow scores 0), executed --runs times and scored; the
method's score is the mean over questions of the mean over runs. The static baselines
(PAPERS.md §S6) run through the same runtime on the same questions. At test time the paper asks an
LLM judge for MATH, DROP and HotpotQA, and its verdict is the score (tasks/answer_judge.py;
`--judge-mode rescue` instead keeps the rule score and lets the judge only lift answers the
rules reject); `--judge auto` judges when the executor is a real endpoint, not the embedded
135M model, whose verdicts would be noise.

Each method writes OUT/<method>/{workflows,executions,scores}.jsonl as it goes (the training
stages' own files), so rerunning the same command resumes; the table goes to OUT/results.md
and OUT/results.json, with calls, tokens and USD per question and run (the client's price
list, or --price-in/--price-out: rerunning a finished evaluation with other prices only prices
it again), and the score against that cost to OUT/accuracy_cost.png
(with the [plot] extra).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .cli import Parser, Preset, UserError, add_flags, check_settings, flag, given, run_cli
from .executor import ExecutorClient
from .executor.client import price_for
from .executor.reachable import require_answering
from .figures import PLOT_HINT, accuracy_against_cost
from .llama.registry import DEFAULT_GENERATOR, DEFAULT_MODEL
from .optimize.config import EMBEDDED as TRAIN_EMBEDDED
from .optimize.config import RunConfig, check_endpoints, stored_settings
from .optimize.plan import add_plan_flags, report
from .optimize.endpoint import executor_endpoint
from .rundir import check_stored_settings, run_lock, save_or_check_settings
from .tasks import Task, load_task
from .tasks.registry import smaller_than_the_paper
from .tasks.answer_judge import JUDGE_MODES, JUDGED_TASKS, AnswerJudge, JudgedTask
from .workflow.runtime import validate_workflow
from .workflow.validate import MAX_WORKFLOW_CHARS
from .workflow.static_baselines import BASELINES, EXECUTOR_TEMPERATURES, ONLY_FOR, baseline_workflow, baselines_for

if TYPE_CHECKING:
    from .optimize.stages import Iteration


@dataclass(frozen=True)
class Method:
    """One row of the results: a generator (with or without the trained adapter) writing one
    workflow per question, or a static baseline workflow."""

    name: str  # as the table shows it
    dir: str  # OUT/<dir>
    adapter: str | None = None
    baseline: str | None = None
    workflow: str | None = None  # the NAME of a fixed workflow (--workflows NAME=FILE)

    @property
    def executor_temperature(self) -> float:
        return EXECUTOR_TEMPERATURES[self.baseline] if self.baseline else 0.0


UNTRAINED = "generator (untrained)"
PRICES = ("price_in", "price_out")  # not stored: the USD column is computed from the stored tokens
PRICE = (0, 10**4)  # USD per 1M tokens


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation; those it shares with training (RunConfig) borrow their flag help."""

    task: str = "gsm8k"
    split: str = flag("test", "Split whose questions are evaluated.", choices=("validate", "test"))
    data_dir: str | None = None
    limit: int | None = None  # only the first N questions
    generator: str = DEFAULT_GENERATOR
    adapter: str | None = flag(None, "The trained LoRA adapter (PEFT layout), e.g. RUN/iter_2/adapter.")
    adapters: tuple[tuple[str, str], ...] = ()  # --adapters NAME=DIR,...: more trained arms, e.g. a cost-aware run
    untrained: bool = True  # also evaluate the generator without the adapter (--no-untrained)
    generator_url: str | None = None
    generator_model: str | None = None
    device: str = "auto"
    generator_concurrency: int = 64
    executor_url: str | None = None  # None: our server over executor_model (default: the embedded one), on loopback
    executor_model: str | None = None
    executor_concurrency: int = 16
    executor_max_tokens: int | None = None
    preflight_timeout: float = 30.0
    baselines: tuple[str, ...] = BASELINES  # --baselines all|none|a,b
    workflows: tuple[tuple[str, str], ...] = ()  # --workflows NAME=FILE,...: fixed workflows, e.g. a searched best
    runs: int = flag(3, "Executions per workflow and baseline; reported scores average them (the paper: 3).",
                     bounds=(1, 1000))
    judge: str = flag("auto", "LLM judge for MATH, DROP and HotpotQA answers: auto = on when the executor is a "
                              "real endpoint.", choices=("auto", "on", "off"))
    judge_mode: str = flag("verdict", "verdict = the judge's Yes/No is the score (the paper); rescue = the rule "
                                      "score, lifted to 1 when the judge says Yes (ours).", choices=JUDGE_MODES)
    judge_url: str | None = flag(None, "OpenAI-compatible chat endpoint of the judge (default: the executor's).")
    judge_model: str | None = flag(None, "Model name of the judge (default: the executor's).")
    price_in: float | None = flag(None, "USD per 1M prompt tokens of the executor model, for the cost column "
                                        "(default: the client's price list, e.g. gpt-4o-mini 0.15).", bounds=PRICE)
    price_out: float | None = flag(None, "USD per 1M completion tokens of the executor model (default: the "
                                         "client's price list, e.g. gpt-4o-mini 0.60).", bounds=PRICE)
    temperature: float = 0.2  # the generator's sampling, as in training (PAPERS.md §S4.1)
    top_p: float = 0.95
    max_new_tokens: int = 1000
    max_resample: int = flag(3, "Resamples of an invalid workflow; a question left without a valid one scores 0.",
                             bounds=(0, 100))
    workflow_timeout_s: float | None = None
    operators: str = ""  # "+MagicoreRefine": the operator set the generator was trained with
    seed: int = 0

    def __post_init__(self):
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
        if self.judge not in ("auto", "on", "off"):
            raise ValueError(f"judge must be auto, on or off, got {self.judge!r}")
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"judge_mode must be one of {', '.join(JUDGE_MODES)}, got {self.judge_mode!r}")
        check_settings(self, like=RunConfig)
        if (self.price_in is None) != (self.price_out is None):
            raise ValueError("--price-in and --price-out go together, in USD per 1M tokens: pass both or neither")

    @property
    def price(self) -> tuple[float, float] | None:
        """USD per 1M (prompt, completion) tokens of the executor; None where unknown."""
        if self.price_in is not None:
            return self.price_in, self.price_out
        return price_for(self.executor_model or DEFAULT_MODEL)

    @property
    def judged(self) -> bool:
        if self.judge == "auto":
            return self.task in JUDGED_TASKS and (self.judge_url or self.executor_url) is not None
        return self.judge == "on"

    @property
    def judge_label(self) -> str:
        """"off", "on (verdict)" or "on (rescue)": what the table and the first lines say."""
        return f"on ({self.judge_mode})" if self.judged else "off"

    def run_config(self) -> RunConfig:
        """The training-loop settings the shared stages read: k=1, invalid workflows resampled."""
        shared = {f.name for f in fields(RunConfig)} & {f.name for f in fields(self)}
        return RunConfig(**{name: getattr(self, name) for name in shared}, k=1, invalid="drop")

    def methods(self, family: str) -> list[Method]:
        """The rows, in order; "all" baselines are those the task's family can run."""
        untrained = [Method(UNTRAINED, "untrained")] if self.untrained or not self.adapter else []
        trained = [Method("scoreflow (trained)", "trained", adapter=self.adapter)] if self.adapter else []
        trained += [Method(f"scoreflow ({name})", f"trained-{name}", adapter=folder) for name, folder in self.adapters]
        return (untrained + trained + [Method(f"workflow {n}", f"workflow-{n}", workflow=n) for n, _ in self.workflows]
                + [Method(f"baseline {b}", f"baseline-{b}", baseline=b) for b in baselines_for(family, self.baselines)])

    def check_baselines(self, family: str) -> None:
        """A baseline named on the command line that the task's family cannot run is an error
        ("all" runs those it can)."""
        if self.baselines != BASELINES and (other := [b for b in self.baselines if b not in baselines_for(family)]):
            raise ValueError(f"--baselines {','.join(other)}: runs on {', '.join(ONLY_FOR[b] for b in other)} tasks "
                             f"only, and {self.task} is a {family} task; leave it out")


# An embedded generator (the no-flag run): 10 questions, and the
# generation settings of scoreflow.train's embedded preset, so it evaluates what that run trained.
EMBEDDED = Preset({"limit": 10, **{k: TRAIN_EMBEDDED.settings[k] for k in ("max_new_tokens", "temperature",
                                                                           "executor_max_tokens", "executor_concurrency")}},
                  applies=lambda cfg: cfg.run_config().embedded)


def run(cfg: EvalConfig, out: Path, api_key: str | None = None) -> dict:
    """Evaluate every method (resuming what OUT holds), holding OUT's lock; returns the results
    (results.json)."""
    from .lora import CONFIG_FILE  # torch (slow to import) only once the flags are parsed: a typo fails at once

    adapters = ([(f"--adapter {cfg.adapter}", cfg.adapter)] if cfg.adapter else []) + [
        (f"--adapters {name}={folder}", folder) for name, folder in cfg.adapters]
    for flag_value, folder in adapters:
        if cfg.generator_url is None and not (Path(folder) / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{flag_value}: no {CONFIG_FILE} there; pass the adapter/ folder of a training "
                                    "iteration, e.g. runs/scoreflow-gsm8k/iter_1/adapter")
    task = load_task(cfg.task, cfg.split, cfg.data_dir)
    cfg.check_baselines(task.family)
    fixed = {name: read_workflow(name, file, task.family) for name, file in cfg.workflows}
    check_stored_settings(out, *_stored_form(cfg, fixed))  # a resume with other flags fails before any model loads
    check_endpoints(replace(cfg.run_config(), api_key=api_key))
    if cfg.judge_url:
        require_answering(cfg.judge_url, "--judge-url", cfg.judge_model or cfg.executor_model or DEFAULT_MODEL,
                          api_key=api_key, timeout_s=cfg.preflight_timeout)
    with run_lock(out):
        return _evaluate(cfg, task, out, api_key, fixed)


def read_workflow(name: str, file: str, family: str) -> str:
    """The workflow source in `file` (--workflows NAME=FILE), checked as a generated one is
    (PAPERS.md §S3's static checks); a file that is not one is a one-line error."""
    try:
        with open(file, encoding="utf-8") as f:
            code = f.read(MAX_WORKFLOW_CHARS + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--workflows {name}={file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if problems := validate_workflow(code, family):
        raise UserError(f"--workflows {name}={file}: not a valid {family} workflow: {problems[0]}")
    return code


def _stored_form(cfg: EvalConfig, fixed: dict[str, str]) -> tuple[dict, Callable[[dict], dict]]:
    """What OUT/config.json stores, and how a stored one is brought to today's form. Prices are
    not stored (a finished table can be priced again); an edited --workflows file is a new run."""
    preset = EMBEDDED.in_force(cfg)
    digests = {name: hashlib.sha256(code.encode()).hexdigest() for name, code in fixed.items()}
    settings = {k: v for k, v in stored_settings(cfg).items() if k not in PRICES}
    defaults = {k: v for k, v in stored_settings(EvalConfig()).items() if k not in PRICES}  # fields added since
    return ({**settings, "preset": preset, "workflow_sha256": digests},
            lambda stored: {**defaults, "preset": preset, "workflow_sha256": {},
                            **{k: v for k, v in stored.items() if k not in PRICES}})


def _evaluate(cfg: EvalConfig, task: Task, out: Path, api_key: str | None, fixed: dict[str, str]) -> dict:
    """`run`'s work, once the settings are checked: store them, generate, execute, tabulate."""
    from .optimize import stages
    from .optimize.generator import make_generator

    preset = EMBEDDED.in_force(cfg)
    save_or_check_settings(out, *_stored_form(cfg, fixed))
    split_size, note = len(task.questions), smaller_than_the_paper(task, cfg.split)
    task = replace(task, questions=task.questions[: cfg.limit])
    run_cfg = replace(cfg.run_config(), api_key=api_key)
    methods = cfg.methods(task.family)
    print(f"scoreflow.evaluate: settings: {preset}", file=sys.stderr)
    if note:
        print(f"scoreflow.evaluate: note: {note}", file=sys.stderr)
    print(f"scoreflow.evaluate: {cfg.task}/{cfg.split}, {len(task.questions)} questions, {cfg.runs} runs each, "
          f"judge {cfg.judge_label}; methods: {', '.join(m.name for m in methods)} -> {out}",
          file=sys.stderr)
    workflows = {}
    for m in methods:  # generate first, one generator in memory at a time; then execute
        it = stages.Iteration(0, out / m.dir, run_cfg, task, label=m.name)
        if m.baseline is None and m.workflow is None:
            generator = make_generator(run_cfg, Path(m.adapter) if m.adapter else None)
            workflows[m] = stages.generate(it, generator)
            del generator
            gc.collect()
        elif m.workflow:
            workflows[m] = stages.fixed_workflows(it, m.dir, fixed[m.workflow])
        else:
            workflows[m] = stages.fixed_workflows(it, m.baseline, baseline_workflow(m.baseline, it.family))
    rows = []
    with executor_endpoint(cfg.executor_url, cfg.executor_model) as url:
        for m in methods:
            it = stages.Iteration(0, out / m.dir, run_cfg, task, m.executor_temperature, m.name)
            executions, judge_calls = asyncio.run(_execute(it, workflows[m], cfg, url, api_key, out))
            rows.append(_method_row(m.name, cfg.runs, workflows[m], executions, judge_calls, cfg.price))
    results = {"config": asdict(cfg), "questions": len(task.questions), "split_questions": split_size,
               "methods": rows, "markdown": _table(cfg, len(task.questions), split_size, rows)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results["markdown"] + "\n")
    print("\n" + results["markdown"])
    figure = accuracy_against_cost(rows, f"{cfg.task}/{cfg.split}", out / "accuracy_cost.png")
    print(f"figure: {figure}" if figure else f"figure: skipped, matplotlib is not installed ({PLOT_HINT} to get it)",
          file=sys.stderr)
    return results


async def _execute(it: Iteration, workflows: list[dict], cfg: EvalConfig, url: str, api_key: str | None,
                   out: Path) -> tuple[list[dict], int]:
    from .optimize import stages

    model = cfg.executor_model or DEFAULT_MODEL
    client = dict(api_key=api_key, max_concurrency=cfg.executor_concurrency)
    async with ExecutorClient(url, model, default_max_tokens=cfg.executor_max_tokens, cache_dir=out / "executor_cache",
                              **client) as executor:
        if not cfg.judged:
            return await stages.execute(it, workflows, executor), 0
        # no cache: a verdict is asked once per finished run; only a run cut short is judged again
        async with ExecutorClient(cfg.judge_url or url, cfg.judge_model or model, **client) as judge_client:
            judge = AnswerJudge(judge_client)
            executions = await stages.execute(replace(it, task=JudgedTask(it.task, judge, cfg.judge_mode)), workflows,
                                              executor)
            if judge.unreadable:
                print(f"  judge: {judge.unreadable} of {judge.calls} verdicts unreadable (counted as No)",
                      file=sys.stderr)
            return executions, judge.calls


def _method_row(method: str, runs: int, workflows: list[dict], executions: list[dict], judge_calls: int,
                price: tuple[float, float] | None) -> dict:
    """Score = mean over questions of the mean over runs; a question without a valid workflow
    scores 0; runs that hit executor errors are not scores and are counted apart. Costs are per
    question and run: LLM calls, executor tokens and USD (None where the price is unknown)."""
    valid = {w["question_id"]: w["valid"] for w in workflows}
    by_question: dict[str, list[dict]] = {q: [] for q in valid}
    for e in executions:
        by_question[e["question_id"]].append(e)
    per_question, per_run = [], [[] for _ in range(runs)]
    for q, runs_of_q in by_question.items():
        scored = [e for e in runs_of_q if e["score"] is not None]
        if not valid[q]:
            per_question.append(0.0)
            for r in range(runs):
                per_run[r].append(0.0)
        elif scored:
            per_question.append(statistics.fmean(e["score"] for e in scored))
            for e in scored:
                per_run[e["run"]].append(e["score"])
    run_means = [statistics.fmean(r) for r in per_run if r]
    n = max(1, len(by_question) * runs)  # costs are per question and run
    prompt, completion = (sum(e[k] for e in executions) for k in ("prompt_tokens", "completion_tokens"))
    return {"method": method, "score": statistics.fmean(per_question) if per_question else None,
            "run_std": statistics.stdev(run_means) if len(run_means) > 1 else 0.0,
            "questions_scored": len(per_question), "valid_workflows": sum(valid.values()),
            "executor_errors": sum(e["status"] == "executor_error" for e in executions),
            "llm_calls": sum(e["llm_calls"] for e in executions) / n,
            "tokens": (prompt + completion) / n,
            "usd": None if price is None else (prompt * price[0] + completion * price[1]) / 1e6 / n,
            "judge_calls": judge_calls}


def _table(cfg: EvalConfig, questions: int, split_size: int, rows: list[dict]) -> str:
    reference = next((r["score"] for r in rows if r["method"] == UNTRAINED), None)
    lines = [f"{cfg.task}/{cfg.split}: {questions} of the split's {split_size} questions, {cfg.runs} runs each, "
             f"executor {cfg.executor_model or DEFAULT_MODEL}, generator {cfg.generator}"
             f"{f' + {cfg.adapter}' if cfg.adapter else ''}, judge {cfg.judge_label}", "",
             "| method | score | ± over runs | vs untrained | valid workflows | executor errors "
             "| LLM calls / run | executor tokens / run | executor USD / run | score per USD |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        delta = "-" if reference is None or r["score"] is None else f"{r['score'] - reference:+.3f}"
        usd = "-" if r["usd"] is None else f"{r['usd']:.6f}"
        per_usd = f"{r['score'] / r['usd']:.0f}" if r["usd"] and r["score"] is not None else "-"
        lines.append(f"| {r['method']} | {score} | {r['run_std']:.3f} | {delta} | {r['valid_workflows']}/{questions} "
                     f"| {r['executor_errors']} | {r['llm_calls']:.1f} | {r['tokens']:.0f} | {usd} | {per_usd} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig, Path, str | None, bool]:
    p = Parser(prog="python -m scoreflow.evaluate", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="Results directory; rerun the same command to resume it "
                                 "(default: runs/evaluate-TASK-SPLIT).")
    p.add_argument("--api-key", help="API key for the executor, judge and generator endpoints (default: "
                                     "$OPENAI_API_KEY); never written to disk.")
    p.add_argument("--baselines", type=_baseline_list, metavar="LIST", default=argparse.SUPPRESS,
                   help=f"Static baselines to run: all (default: those the task can run), none, or a comma list of "
                        f"{', '.join(BASELINES)} (programmer: math tasks only; test: code tasks only).")
    p.add_argument("--workflows", type=_workflow_list, metavar="NAME=FILE,...", default=argparse.SUPPRESS,
                   help="Fixed workflows to evaluate beside the generator, one for every question (e.g. "
                        "aflow=runs/aflow/best_workflow.py); each file holds a workflow in the generator's format.")
    p.add_argument("--adapters", type=_adapter_list, metavar="NAME=DIR,...", default=argparse.SUPPRESS,
                   help="More trained adapters, each a row 'scoreflow (NAME)' beside --adapter's (e.g. "
                        "cost=runs/cost/iter_1/adapter, a run trained with --cost-weight).")
    p.add_argument("--no-untrained", action="store_true", help="Skip the generator without the adapter.")
    add_plan_flags(p, budget=False)
    add_flags(p, EvalConfig, preset=EMBEDDED.settings, like=RunConfig)
    a = vars(p.parse_args(argv))
    given_flags = given(a, EvalConfig)
    if a["no_untrained"]:
        given_flags["untrained"] = False
    cfg = EMBEDDED.resolve(EvalConfig, given_flags)
    out = Path(a["out"] or f"runs/evaluate-{cfg.task}-{cfg.split}")
    return cfg, out, a["api_key"], a["plan"]


def _named_paths(text: str, kind: str, example: str) -> tuple[tuple[str, str], ...]:
    """'a=x,b=y' -> (("a", "x"), ("b", "y")): NAME=<kind> pairs, each NAME once."""
    named = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, _, path = (part.strip() for part in item.partition("="))
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not path:
            raise argparse.ArgumentTypeError(f"{item!r}: pass NAME={kind} pairs separated by commas, NAME of letters, "
                                             f"digits, - and _ (e.g. {example})")
        named.append((name, path))
    if not named or len({name for name, _ in named}) < len(named):
        raise argparse.ArgumentTypeError(f"{text!r}: pass at least one NAME={kind}, each NAME once")
    return tuple(named)


def _workflow_list(text: str) -> tuple[tuple[str, str], ...]:
    return _named_paths(text, "FILE", "aflow=runs/aflow/best_workflow.py")


def _adapter_list(text: str) -> tuple[tuple[str, str], ...]:
    return _named_paths(text, "DIR", "cost=runs/cost/iter_1/adapter")


def _baseline_list(text: str) -> tuple[str, ...]:
    names = BASELINES if text == "all" else () if text == "none" else tuple(
        b.strip() for b in text.split(",") if b.strip())
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {', '.join(unknown)}; choose all, none or from "
                                         f"{', '.join(BASELINES)}")
    return names


def main(argv: list[str] | None = None) -> None:
    cfg, out, api_key, show_plan = parse_args(argv)
    if show_plan:  # the generator's stage: evaluation trains nothing
        print(report(cfg.run_config(), None, training=False))
        return
    run(cfg, out, api_key)


if __name__ == "__main__":
    run_cli("scoreflow.evaluate", main)
