"""The five stages of one ScoreFlow iteration (PAPERS.md §S4), each resumable from the run directory:

    workflows.jsonl   k workflows per question, with validity and resample count   (1)
    executions.jsonl  every run of every valid workflow: answer, score, status       (2)
    scores.jsonl      per workflow: mean score over its runs                          (2)
    pairs.jsonl       the N pairs drawn from P* ∝ d(s_w, s_l)                         (3-4)
    train/, adapter/  Score-DPO on the LoRA, adapter in the PEFT layout               (5)

A stage appends one complete record per unit of work and skips units already on disk, so a
killed run redoes only unfinished work. A workflow run that fails in any way is recorded (as
status "error"), never retried, so no workflow can stop the stage, now or on resume; and a
run during which the process itself died MAX_ABRUPT_ENDS times (attempts.jsonl) is recorded
as crashed instead of being started again. Seeds depend only on (run seed, iteration, question,
resample round), and sampling is batch-independent, so a resumed stage reproduces exactly
what an uninterrupted one would have written.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..dpo import GAPS, ScoredWorkflow, build_pairs, pairs_from_records, pairs_to_records, sample_pairs
from ..dpo.batch import PairExample
from ..dpo.trainer import train_dpo
from ..engine.sampling import splitmix64
from ..lora import save_adapter
from ..tasks.base import Question, Task
from ..workflow.prompts import search_operators
from ..workflow.validate import (NO_OPERATOR_CALL, SIMILARITY_THRESHOLDS, TIME_LIMITS_S, calls_an_operator,
                                operators_built, template_similarity)
from ..workflow.restricted import describe
from ..workflow.runtime import WorkerStartError, extract_graph, run_workflow, validate_workflow
from .config import RunConfig
from .cost import cost_aware, mean_costs
from .dry_run import dry_run
from .generator import RESPONSE_PREFIX
from .ranks import is_main
from ..progress import Progress
from ..rundir import JsonlLog, mark_done, stage_done

MAX_ABRUPT_ENDS = 2  # a run during which the process died this often is recorded as crashed, not started again


@dataclass
class Iteration:
    """What the stages of iteration `index` share."""

    index: int
    dir: Path
    cfg: RunConfig
    task: Task
    executor_temperature: float = 0.0  # generating operator calls (PAPERS.md §S1: 0); cot_sc's samples need > 0
    label: str | None = None  # how progress lines name it (default "iter N")

    @property
    def name(self) -> str:
        return self.label or f"iter {self.index}"

    @property
    def family(self) -> str:
        return self.task.family

    @property
    def threshold(self) -> float | None:
        return SIMILARITY_THRESHOLDS.get(self.task.name)

    def seed(self, question: int, round_: int) -> int:
        return splitmix64(splitmix64(splitmix64(self.cfg.seed) ^ self.index) ^ (question << 8 | round_)) >> 1


def check_workflow(response: str, it: Iteration) -> dict:
    """PAPERS.md §S3 validity: a <graph> with a valid Workflow that calls an operator, no forbidden
    snippets, not near the template (on the run_workflow bodies)."""
    code = extract_graph(RESPONSE_PREFIX + response)
    problems = ["no <graph> block with code"] if code is None else validate_workflow(code, it.family)
    if code is not None and not problems:
        if not calls_an_operator(code):
            problems.append(NO_OPERATOR_CALL)
        if extra := sorted(operators_built(code) - set(search_operators(it.family, it.cfg.extra_operators))):
            problems.append(f"uses {', '.join(extra)}, which this run does not offer (add it with --operators +Name)")
    similarity = template_similarity(code or "", it.family)
    if it.threshold is not None and similarity >= it.threshold:
        problems.append(f"too similar to the template (difflib ratio {similarity:.2f} >= {it.threshold})")
    return {"code": code, "valid": not problems, "problems": problems, "similarity": round(similarity, 4)}


def check_and_dry_run(samples: list[list[str]], it: Iteration) -> list[list[dict]]:
    """check_workflow on every response, then the dry run (dry_run.py) of the statically
    valid ones, all at once; a failed dry run makes the workflow invalid, with the reason."""
    checked = [[check_workflow(r, it) for r in responses] for responses in samples]
    runnable = [w for ws in checked for w in ws if w["valid"]]

    async def dry_runs() -> list[str | None]:
        return await asyncio.gather(*(dry_run(w["code"], it.task) for w in runnable))

    for w, error in zip(runnable, asyncio.run(dry_runs()) if runnable else []):
        if error is not None:
            w["valid"], w["problems"] = False, [error]
    return checked


# -- (1) generate --------------------------------------------------------------------------------
def generate(it: Iteration, generator) -> list[dict]:
    log = JsonlLog(it.dir / "workflows.jsonl")
    have = {r["question_id"] for r in log.read()}
    todo = [(i, q) for i, q in enumerate(it.task.questions) if q.id not in have]
    progress = Progress(f"[{it.name}] generate (questions)", len(it.task.questions))
    progress.done = len(have)
    step = generator.questions_per_call(it.cfg.k)
    for c in range(0, len(todo), step):
        chunk = todo[c: c + step]
        prompts = [generator.prompt_ids(it.family, q.prompt) for _, q in chunk]
        samples = generator.sample(prompts, it.cfg.k, [it.seed(i, 0) for i, _ in chunk])
        checked = check_and_dry_run(samples, it)
        rounds = [[0] * len(responses) for responses in samples]
        for round_ in range(1, it.cfg.max_resample + 1 if it.cfg.invalid == "drop" else 1):
            bad = [[j for j, w in enumerate(ws) if not w["valid"]] for ws in checked]
            again = [p for p, js in enumerate(bad) if js]  # the chunk's questions resample together
            if not again:
                break
            redo = generator.sample([prompts[p] for p in again], [len(bad[p]) for p in again],
                                    [it.seed(chunk[p][0], round_) for p in again])
            for p, responses, rechecked in zip(again, redo, check_and_dry_run(redo, it)):
                for j, r, w in zip(bad[p], responses, rechecked):
                    samples[p][j], checked[p][j], rounds[p][j] = r, w, round_
        records = [{"id": f"it{it.index}-{q.id}-w{j}", "question_id": q.id, "index": j, "response": r,
                    "resamples": rounds[p][j], **w}
                   for p, (_, q) in enumerate(chunk) for j, (r, w) in enumerate(zip(samples[p], checked[p]))]
        log.append(records)
        progress.update(len(chunk))
    return log.read()


def fixed_workflows(it: Iteration, name: str, code: str) -> list[dict]:
    """The same workflow for every question (a static baseline, or a --workflows file)."""
    records = [{"id": f"{name}-{q.id}", "question_id": q.id, "index": 0, "response": code, "code": code,
                "valid": True, "problems": [], "resamples": 0} for q in it.task.questions]
    JsonlLog(it.dir / "workflows.jsonl").write(records)
    return records


# -- (2) execute and score ------------------------------------------------------------------------
async def execute(it: Iteration, workflows: list[dict], executor) -> list[dict]:
    log = JsonlLog(it.dir / "executions.jsonl")
    done = {(r["workflow_id"], r["run"]) for r in log.read()}
    questions = {q.id: q for q in it.task.questions}
    timeout = it.cfg.workflow_timeout_s or TIME_LIMITS_S[it.family]
    todo = [w for w in workflows if w["valid"] and any((w["id"], r) not in done for r in range(it.cfg.runs))]
    progress = Progress(f"[{it.name}] execute (workflows x runs)", len(todo) * it.cfg.runs)
    sem = asyncio.Semaphore(it.cfg.executor_concurrency)
    attempts = Attempts(it.dir / "attempts.jsonl")

    async def runs_of(w: dict) -> None:
        q = questions[w["question_id"]]
        async with sem:
            for r in range(it.cfg.runs):
                if (w["id"], r) not in done:
                    # every call of run r is a real request (the paper's R real calls); the cache
                    # replays this run's own calls, and only when it is resumed after a crash
                    scope = f"{it.dir.name}/{w['id']}/run{r}"
                    runner = functools.partial(run_once, it, w, q, r, executor.scoped(scope), timeout)
                    log.append([await attempts.run(w, r, runner)])
                progress.update()

    await asyncio.gather(*(runs_of(w) for w in todo))
    return log.read()


async def run_once(it: Iteration, w: dict, q: Question, run: int, executor, timeout: float) -> dict:
    """The execution record of one run. Any failure of the run or of its scoring is an
    "error" record with the reason; only a machine that cannot start workers at all raises."""
    try:
        for attempt in range(2):  # an executor failure says nothing about the workflow: retry once
            res = await run_workflow(w["code"], q.prompt, executor, it.family, timeout, task=it.task, question=q,
                                     temperature=it.executor_temperature)
            if res.status != "executor_error":
                break
        score = None if res.status == "executor_error" else (await it.task.ascore(q, res.answer) if res.ok else 0.0)
    except WorkerStartError:
        raise
    except Exception as e:  # noqa: BLE001 - recorded: one run must not stop the stage, now or on resume
        return failed_execution(w, run, f"the run failed: {describe(e)}")
    return {"workflow_id": w["id"], "question_id": q.id, "run": run, "status": res.status, "answer": res.answer,
            "score": score, "error": (res.error or "")[:500], "llm_calls": res.llm_calls,
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "seconds": round(res.duration_s, 3)}


def failed_execution(w: dict, run: int, error: str) -> dict:
    """The record of a run that produced no result: status "error", score 0."""
    return {"workflow_id": w["id"], "question_id": w["question_id"], "run": run, "status": "error", "answer": "",
            "score": 0.0, "error": error[:500], "llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "seconds": 0.0}


class Attempts:
    """attempts.jsonl: a line when a run starts and one when it is stopped in an orderly way
    (cancelled, e.g. Ctrl-C). A start without a stop or a record means the process died
    during the run; after MAX_ABRUPT_ENDS of those, the run is recorded as crashed."""

    def __init__(self, path: Path):
        self.log = JsonlLog(path)
        events = Counter((a["workflow_id"], a["run"], a["event"]) for a in self.log.read())
        self.abrupt = Counter({(w, r): n - events[w, r, "stop"] for (w, r, e), n in events.items() if e == "start"})

    async def run(self, w: dict, run: int, execute) -> dict:
        """`await execute()`, the run's record, unless the run already ended the process too often."""
        ended = self.abrupt[w["id"], run]
        if ended >= MAX_ABRUPT_ENDS:
            return failed_execution(w, run, f"the process died during this run {ended} times; recorded as crashed, "
                                            "not started again")
        self.log.append([{"workflow_id": w["id"], "run": run, "event": "start"}])
        try:
            return await execute()
        except asyncio.CancelledError:
            self.log.append([{"workflow_id": w["id"], "run": run, "event": "stop"}])
            raise


def score(it: Iteration, workflows: list[dict], executions: list[dict]) -> list[dict]:
    """Mean score over the scored runs (failed/timed-out runs score 0; executor errors are not
    scores), less its cost with --cost-weight > 0 (cost.py). Invalid workflows: score 0 in
    "zero" mode, no score (dropped) in "drop" mode; in "zero" mode valid ones score
    valid_floor + (1 - valid_floor) * that. Each record keeps the solve rate and the mean cost."""
    runs: dict[str, list[float]] = {}
    for e in executions:
        if e["score"] is not None:
            runs.setdefault(e["workflow_id"], []).append(e["score"])
    solve = {w: sum(s) / len(s) for w, s in runs.items()}
    costs = mean_costs(executions, it.cfg.cost_unit, it.cfg.price)
    paid = cost_aware(solve, costs, {w["id"]: w["question_id"] for w in workflows}, it.cfg.cost_weight)
    records = []
    for w in workflows:
        s = runs.get(w["id"])
        value = paid[w["id"]] if s else (0.0 if not w["valid"] and it.cfg.invalid == "zero" else None)
        if s and it.cfg.invalid == "zero":
            value = it.cfg.valid_floor + (1 - it.cfg.valid_floor) * value
        records.append({"workflow_id": w["id"], "question_id": w["question_id"], "valid": w["valid"],
                        "score": value, "runs": len(s or []), "solve": solve.get(w["id"]),
                        "cost": costs.get(w["id"])})
    JsonlLog(it.dir / "scores.jsonl").write(records)
    return records


# -- (3, 4) pairs -------------------------------------------------------------------------------------
def pairs(it: Iteration, workflows: list[dict], scores: list[dict]) -> list[dict]:
    log = JsonlLog(it.dir / "pairs.jsonl")
    if stage_done(it.dir, "pairs"):
        return log.read()
    text = {w["id"]: w["code"] or RESPONSE_PREFIX + w["response"] for w in workflows}
    near = {i for i, t in text.items() if it.threshold is not None and template_similarity(t, it.family) >= it.threshold}
    scored = [ScoredWorkflow(s["workflow_id"], s["question_id"], s["score"])
              for s in scores if s["score"] is not None and s["workflow_id"] not in near]  # near-template: dropped
    candidates = build_pairs(scored)
    drawn = sample_pairs(candidates, it.cfg.pairs, GAPS[it.cfg.pair_gap], seed=it.seed(0, 255)) if candidates else []
    log.write(pairs_to_records(drawn))
    mark_done(it.dir, "pairs", {"candidates": len(candidates), "drawn": len(drawn)})
    return log.read()


# -- (5) train ------------------------------------------------------------------------------------------
def train(it: Iteration, generator, workflows: list[dict], pair_records: list[dict]) -> list[dict]:
    """Score-DPO on the generator's LoRA; writes adapter/ (PEFT layout)."""
    if stage_done(it.dir, "train"):
        return JsonlLog(it.dir / "train" / "metrics.jsonl").read()
    history = []
    if pair_records:
        by_id = {w["id"]: w for w in workflows}
        questions = {q.id: q for q in it.task.questions}
        tok = generator.tokenizer
        end = [tok.eos_token_ids[0]]
        examples = []
        for p in pairs_from_records(pair_records):
            prompt = generator.prompt_ids(it.family, questions[p.question_id].prompt)
            chosen, rejected = (tok.encode(by_id[i]["response"]) + end for i in (p.winner_id, p.loser_id))
            examples.append(PairExample(tuple(prompt), tuple(chosen), tuple(rejected), p.s_w, p.s_l, p.weight))
        generator.release()  # the engine's cache and weight copies: memory the training pass needs
        history = train_dpo(generator.model, examples, it.dir / "train", it.cfg.dpo)
    if is_main():  # under torchrun every rank holds the same adapter; rank 0 writes it
        save_adapter(generator.model, it.dir / "adapter", base_model_name_or_path=it.cfg.generator)
        mark_done(it.dir, "train", {"steps": len(history)})
    return history
