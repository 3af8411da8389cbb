"""A resumable MAgICoRE run over a dataset, with the baselines on the same chains (and the
budget-matched ones on samples of their own).

Two phases, each writing one JSON line per finished question, so a rerun with the same
OUT skips what is done (and a crash loses at most the questions in flight):

    1. solve    OUT/initial.jsonl   k Solver chains per question with ORM/PRM scores and cost
    2. refine   OUT/results.jsonl   MAgICoRE per iteration + every baseline (the Self-Refine
                                    ones per round), scored against gold

Phase 2 starts only when phase 1 is complete for every question that did not crash: the
reference rule's normalisation statistics (condition 1) are taken over the first chain of every
such question of the run (all of the test set, or the first --limit questions).
A question whose executor calls fail (after the client's retries) is recorded in
OUT/errors.jsonl, not in the results; rerun to retry it. A question that fails any other
way (a crash: a bug, or an input our code cannot handle) is recorded there too, marked
"crashed", and is not retried: a rerun would crash the same way. It counts as an error in
the summary, and the refine phase goes on without it. OUT/config.json holds the run's
settings; a rerun with different settings is refused rather than mixing runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from scoreflow.executor import ExecutorError
from scoreflow.rundir import save_or_check_settings
from scoreflow.tasks import Question, Task
from scoreflow.gather import gather

from .agents import Agents, Ledger, Sampling
from .baselines import (BASELINES, MATCHED_BASELINES, MethodResult, chain_baselines, matched_baselines,
                        refine_baselines, total)
from .difficulty import Chain, RewardStats, dataset_stats
from .loop import MagicoreConfig, Trace, refine_until_easy, solve
from .report import summarize
from .reward import RewardModels


@dataclass(frozen=True)
class MagicoreRunConfig:
    """Everything that decides a run's results (concurrency does not, and is not stored).
    self_refine_rounds None: MAgICoRE's T. baseline_k: N of the budget-matched baselines
    (baselines.py), which run only with it."""

    dataset: str
    questions: int
    magicore: MagicoreConfig
    sampling: Sampling
    baselines: tuple[str, ...] = tuple(b for b in BASELINES if b not in MATCHED_BASELINES)
    self_refine_rounds: int | None = None
    solver: str = ""
    orm: str = ""
    prm: str = ""
    preset: str = "paper defaults"  # or the command's preset that set some of the above
    baseline_k: int | None = None

    def __post_init__(self):
        matched = [b for b in self.baselines if b in MATCHED_BASELINES]
        if matched and self.baseline_k is None:
            raise ValueError(f"{', '.join(matched)} need(s) --baseline-k N, the samples of their own")
        if (self.baseline_k is not None and self.baseline_k < 1) or (self.self_refine_rounds or 0) < 0:
            raise ValueError(f"need --baseline-k >= 1 and --self-refine-rounds >= 0, got {self.baseline_k} and "
                             f"{self.self_refine_rounds}")

    @property
    def refine_rounds(self) -> int:
        """R of the Self-Refine baselines."""
        return self.magicore.iterations if self.self_refine_rounds is None else self.self_refine_rounds


def stored_form(config: MagicoreRunConfig) -> tuple[dict, Callable[[dict], dict]]:
    """What OUT/config.json holds for `config`, and how a stored one is read in today's form."""
    return dataclasses.asdict(config), lambda stored: _with_new_defaults(stored, config)


def _with_new_defaults(stored: dict, current: MagicoreRunConfig) -> dict:
    """A config.json written before a MagicoreConfig field existed reads as that field's default;
    one written before a top-level field existed (preset) reads as the current value. A run
    written before the difficulty rule existed followed neither rule's loop: it reads as rule
    None and is refused rather than resumed."""
    return {**dataclasses.asdict(current), **stored,
            "magicore": {**dataclasses.asdict(MagicoreConfig()), "difficulty_rule": None, **stored.get("magicore", {})}}


def _chain_row(chain: Chain, ledger: Ledger) -> dict[str, Any]:
    return {"text": chain.text, "answer": chain.answer, "orm": chain.orm, "prm": list(chain.prm),
            "prompt_tokens": ledger.prompt_tokens, "completion_tokens": ledger.completion_tokens}


def _chains(row: dict) -> tuple[list[Chain], list[Ledger]]:
    chains = [Chain(c["text"], c["answer"], c["orm"], tuple(c["prm"])) for c in row["chains"]]
    return chains, [Ledger(1, c["prompt_tokens"], c["completion_tokens"]) for c in row["chains"]]


def _records(path: Path) -> list[dict]:
    """The JSON lines of `path`; a line cut short by a crash is skipped (that question is redone)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [row for row in map(_json_or_none, lines) if isinstance(row, dict)]


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _read_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in _records(path)}


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


class Runner:
    """Runs the two phases for `questions` of `task` into `out` (see the module docstring)."""

    def __init__(self, task: Task, questions: list[Question], agents: Agents, rms: RewardModels,
                 config: MagicoreRunConfig, out: Path, concurrency: int = 4, log: Callable[[str], None] = print):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.task, self.questions, self.agents, self.rms = task, questions, agents, rms
        self.config, self.out, self.concurrency, self.log = config, Path(out), concurrency, log

    async def run(self) -> dict[str, Any] | None:
        """Both phases; the summary (report.summarize), or None when phase 1 is incomplete."""
        self.out.mkdir(parents=True, exist_ok=True)
        save_or_check_settings(self.out, *stored_form(self.config))
        initial = await self._phase("solve", self.out / "initial.jsonl", self._solve)
        crashed = self._crashed("solve")
        missing = [q.id for q in self.questions if q.id not in initial and q.id not in crashed]
        if missing:
            self.log(f"{len(missing)} question(s) failed in the solve phase (see {self.out / 'errors.jsonl'}); "
                     f"rerun the same command to retry them before refinement starts")
            return None
        first = [_chains(initial[q.id])[0][0] for q in self.questions if q.id in initial]
        magicore = self.config.magicore
        reference = magicore.difficulty_rule == "reference" and magicore.normalization == "dataset"
        stats = dataset_stats(first) if reference else None
        results = await self._phase("refine", self.out / "results.jsonl",
                                    lambda q: self._refine(q, initial[q.id], stats),
                                    [q for q in self.questions if q.id in initial])
        summary = summarize([results[q.id] for q in self.questions if q.id in results], self.config,
                            errors=len(self.questions) - len(results))
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "results.md").write_text(summary["markdown"] + "\n")
        return summary

    def _crashed(self, phase: str) -> set[str]:
        """Questions recorded as crashed in `phase` (errors.jsonl): not run again."""
        errors = _records(self.out / "errors.jsonl")
        return {row["id"] for row in errors if row.get("crashed") and row["phase"] == phase}

    async def _phase(self, name: str, path: Path, work: Callable[[Question], Awaitable[dict]],
                     questions: list[Question] | None = None) -> dict[str, dict]:
        """Run `work` on every question (of `questions`, default all) without a row in
        `path` and not recorded as crashed, `concurrency` at a time, appending each row as it
        finishes; progress and ETA after each question."""
        rows = _read_rows(path)
        ids = {q.id for q in self.questions}
        rows = {i: r for i, r in rows.items() if i in ids}
        crashed = self._crashed(name)
        todo = [q for q in (self.questions if questions is None else questions)
                if q.id not in rows and q.id not in crashed]
        if not todo:
            return rows
        self.log(f"[{name}] {len(rows)}/{len(self.questions)} already done, {len(todo)} to go")
        gate, start, finished = asyncio.Semaphore(self.concurrency), time.monotonic(), 0

        async def one(question: Question) -> None:
            nonlocal finished
            async with gate:
                try:
                    row = await work(question)
                except Exception as e:  # noqa: BLE001 - one question's failure must not stop the others
                    crashed = not isinstance(e, ExecutorError)  # executor failures are transient: retried
                    _append(self.out / "errors.jsonl", {"id": question.id, "phase": name, "crashed": crashed,
                                                        "error": f"{type(e).__name__}: {e}"[:2000]})
                    self.log(f"[{name}] {question.id}: {'crashed, not retried: ' if crashed else ''}"
                             f"{type(e).__name__}: {e}")
                    return
            rows[question.id] = row
            _append(path, row)
            finished += 1
            elapsed = time.monotonic() - start
            eta = elapsed / finished * (len(todo) - finished)
            self.log(f"[{name}] {len(rows)}/{len(self.questions)} {question.id} "
                     f"elapsed {elapsed:.0f}s ETA {eta:.0f}s")

        await asyncio.gather(*(one(q) for q in todo))
        return rows

    async def _solve(self, question: Question) -> dict:
        chains, ledgers = await solve(self.agents, self.rms, question.prompt, self.config.magicore.k)
        return {"id": question.id, "chains": [_chain_row(c, l) for c, l in zip(chains, ledgers)]}

    async def _refine(self, question: Question, initial: dict, stats: RewardStats | None) -> dict:
        chains, solver = _chains(initial)
        config, baselines = self.config, self.config.baselines
        trace, refined, matched = await gather(  # if one fails, the others are cancelled rather than left running
            refine_until_easy(self.agents, self.rms, question.prompt, chains, config.magicore, stats, total(solver)),
            refine_baselines(self.agents, question.prompt, chains, solver, config.refine_rounds, baselines),
            matched_baselines(self.agents, self.rms, question.prompt, config.baseline_k or 0, baselines))
        methods = {**chain_baselines(chains, solver, baselines), **matched,
                   **{name: rounds[-1] for name, rounds in refined.items()}}
        rows = {name: {**dataclasses.asdict(r), "correct": self._correct(question, r.answer)}
                for name, r in methods.items()}
        for name, rounds in refined.items():
            rows[name]["rounds"] = [self._round(question, r) for r in rounds]
        return {"id": question.id, "gold": question.gold, "magicore": self._iterations(question, trace),
                "baselines": rows}

    def _correct(self, question: Question, answer: str | None) -> float:
        return self.task.score(question, self.agents.answer_format.scorable(answer))

    def _round(self, question: Question, result: MethodResult) -> dict:
        return {"answer": result.answer, "correct": self._correct(question, result.answer), "calls": result.calls,
                "tokens": result.prompt_tokens + result.completion_tokens}

    def _iterations(self, question: Question, trace: Trace) -> dict:
        """Per iteration 0..T; after an early stop the last round's answer and cost carry on."""
        rounds = list(trace.rounds) + [trace.rounds[-1]] * (self.config.magicore.iterations + 1 - len(trace.rounds))
        return {"answers": [r.answer for r in rounds],
                "correct": [self._correct(question, r.answer) for r in rounds],
                "hard": [r.hard for r in rounds], "calls": [r.calls for r in rounds],
                "tokens": [r.tokens for r in rounds], "refinements": len(trace.rounds) - 1,
                "scored": trace.scored, "difficulty": [dataclasses.asdict(r.difficulty) for r in trace.rounds]}
