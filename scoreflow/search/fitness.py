"""A candidate's fitness: one workflow, the same for every validation question, run R times per
question by the training loop's execution stage (optimize/stages.py) in a folder of its own, so
that a killed search resumes mid-evaluation and never redoes a finished run.

    fitness = await evaluate(out / "round_3", code, task, cfg.run_config(), executor, seed=7)
    fitness.mean, fitness.spread, fitness.scores, fitness.failures

What the two methods read of it. AFlow scores a round by the mean over its validation runs,
its convergence check reads their spread (np.std over the runs; MetaGPT
metagpt/ext/aflow/scripts/optimizer_utils/evaluation_utils.py, convergence_utils.py), and it
shows the optimiser a few wrong answers drawn at random (FAILURES_SHOWN; data_utils.load_log).
ADAS bootstraps the score of every question and repetition (ADAS _mmlu/search.py, `acc_list`
over `n_repreat` copies of the validation set). A run the executor failed is not a score
(stages.score's rule); a failed or timed-out run scores 0.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..executor import ExecutorClient
from ..optimize import stages
from ..optimize.config import RunConfig
from ..rundir import JsonlLog
from ..tasks import Task

FAILURES_SHOWN = 3  # AFlow: data_utils.load_log shows min(3, n) logged wrong answers
SHOWN_CHARS = 600  # of a question, an answer or an error, in what the optimiser reads


@dataclass(frozen=True)
class Fitness:
    """mean: over questions of the mean of a question's scored runs (0 when nothing scored);
    run_means: run r's mean over the questions scored in it; spread: their population standard
    deviation; scores: every scored run, ordered by (question, run); failures: up to
    FAILURES_SHOWN runs that did not score 1, each {question, expected, answer, score, status,
    error} (score None: the executor failed)."""

    mean: float
    run_means: list[float]
    spread: float
    scores: list[float]
    per_question: dict[str, float]
    failures: list[dict]


async def evaluate(folder: Path, code: str, task: Task, settings: RunConfig, executor: ExecutorClient, *,
                   temperature: float = 0.0, seed: int | Sequence[int] = 0) -> Fitness:
    """The fitness of `code` on `task`, settings.runs runs per question, written to
    folder/fitness.jsonl; read back from there when it is already done. `folder.name` must be
    unique in the search: it scopes the executor cache, which replays only a killed run's own
    calls. `temperature` is the executor's for generating operators; `seed` draws the failures shown."""
    log = JsonlLog(folder / "fitness.jsonl")
    if done := log.read():
        return Fitness(**done[0])
    it = stages.Iteration(0, folder, settings, task, temperature, label=folder.name)
    executions = await stages.execute(it, stages.fixed_workflows(it, folder.name, code), executor)
    fitness = _summary(task, sorted(executions, key=lambda e: (e["question_id"], e["run"])), settings.runs, seed)
    log.write([asdict(fitness)])
    return fitness


def _summary(task: Task, executions: list[dict], runs: int, seed: int | Sequence[int]) -> Fitness:
    scored = [e for e in executions if e["score"] is not None]
    by_question: dict[str, list[float]] = {}
    for e in scored:
        by_question.setdefault(e["question_id"], []).append(e["score"])
    per_question = {q: statistics.fmean(s) for q, s in by_question.items()}
    run_means = [statistics.fmean(s) for r in range(runs) if (s := [e["score"] for e in scored if e["run"] == r])]
    questions = {q.id: q for q in task.questions}
    wrong = [e for e in executions if e["score"] is None or e["score"] < 1]
    drawn = np.random.default_rng(seed).choice(len(wrong), min(FAILURES_SHOWN, len(wrong)), replace=False)
    shown = [wrong[i] for i in sorted(drawn)]
    failures = []
    for e in shown:
        q = questions[e["question_id"]]
        failures.append({"question": q.prompt[:SHOWN_CHARS],
                         "expected": "(hidden tests)" if task.family == "code" else q.gold[:SHOWN_CHARS],
                         "answer": e["answer"][:SHOWN_CHARS], "score": e["score"], "status": e["status"],
                         "error": e["error"][:SHOWN_CHARS]})
    return Fitness(mean=statistics.fmean(per_question.values()) if per_question else 0.0, run_means=run_means,
                   spread=statistics.pstdev(run_means) if len(run_means) > 1 else 0.0,
                   scores=[e["score"] for e in scored], per_question=per_question, failures=failures)
