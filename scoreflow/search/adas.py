"""ADAS's Meta Agent Search (Hu et al. 2024, "Automated Design of Agentic Systems"), on our
parts. The archive starts with the static baselines the task's family can run (PAPERS.md §S6,
workflow/static_baselines.py), as ADAS's starts with its hand-designed agents, each evaluated
(cot_sc at its executor temperature, 0.7). Every generation:

1. the meta agent reads the whole archive, every member's thought, code and fitness, and
   proposes a new workflow (thought, name, code);
2. two reflection steps: it reviews the proposal (interestingness next to the archive, mistakes,
   improvements; shown the last archive member from the second generation on) and revises it,
   then revises the code once more against the rules;
3. the workflow is checked (optimizer.py) and evaluated (fitness.py); an error, a failed check
   or every run scoring below ALL_ZERO, goes back to the meta agent for a fix of the same idea
   while attempts remain: at most --debug-max checks and evaluations per generation;
4. the last evaluated workflow joins the archive with its fitness (`bootstrap`); a generation
   that evaluated none adds nothing, and the search goes on.

Fitness is ADAS's: the median of BOOTSTRAP_SAMPLES bootstrap means of the candidate's run scores
(every validation question and repetition) and the central CONFIDENCE interval of those means,
shown to the meta agent in percent. The best member (highest median; ties: the earlier) is
OUT/best_workflow.py. On disk, each written before the next step: the initial members in
OUT/initial.jsonl, a generation's meta-agent replies in OUT/gen_n/steps.jsonl as they come, its
evaluations in OUT/gen_n/gen_n-try_k/, its record (with the member it added) in
OUT/generations.jsonl, the per-generation log; a search killed anywhere resumes there.

Constants, from ShengranHu/ADAS:
    2 reflection steps                  _mmlu/search.py search() (Reflexion_prompt_1, _2 of mmlu_prompt.py)
    debug_max 3                         _mmlu/search.py, _drop/search.py (argparse): config.AdasConfig
    ALL_ZERO 0.01                       search(): `np.mean(acc_list) < 0.01` raises "All 0 accuracy"
    BOOTSTRAP_SAMPLES 100000,           _mmlu/utils.py bootstrap_confidence_interval: percentiles
    CONFIDENCE 0.95                     2.5 and 97.5 and the median of the resampled means
                                        (_drop/utils.py passes 0.025 and 0.975 as percentiles, a slip
                                        we do not copy)
    temperature 0.8, max_tokens 4096,   get_json_response_from_gpt_reflect, argparse: config.AdasConfig
    n_repreat 1 (one run)
Where this differs from the reference: its debug loop also asks for a fix after the last attempt,
and when that happens archives the newest, never evaluated code with the previous code's scores;
here no reply is asked for that could not be evaluated, and a member is the code that was.
Its random draws are seeded (the reference's are not): the bootstrap by (seed, member).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..executor import ExecutorClient
from ..rundir import JsonlLog
from ..tasks import Task
from ..workflow.prompts import generator_guide
from ..workflow.static_baselines import EXECUTOR_TEMPERATURES, baseline_workflow, baselines_for
from .command import write_best
from .config import AdasConfig
from .fitness import Fitness, evaluate
from .optimizer import Optimizer, continued
from .prompts import (ADAS_ALL_ZERO, ADAS_DEBUG, ADAS_MEMBER, ADAS_PREVIOUS, ADAS_PROPOSE, ADAS_REFLECT,
                      ADAS_REFLECT_AGAIN, BASELINE_THOUGHTS, failures_text)

BOOTSTRAP_SAMPLES = 100_000
CONFIDENCE = 0.95
ALL_ZERO = 0.01
DRAWS_PER_CHUNK = 2_000_000  # resampled indices held at once (16 MB)


def bootstrap(scores: Sequence[float], seed: int | Sequence[int], samples: int = BOOTSTRAP_SAMPLES,
              confidence: float = CONFIDENCE) -> dict[str, float]:
    """{"median", "low", "high"} of the means of `samples` resamples (with replacement, of the same
    size) of `scores`: their median and the percentiles (1 − confidence)/2 and (1 + confidence)/2,
    as fractions. Resample b is the b-th row of default_rng(seed).integers(0, n, (samples, n)),
    drawn in chunks of whole rows; no scores: all 0."""
    data = np.asarray(scores, dtype=np.float64)
    if data.size == 0:
        return {"median": 0.0, "low": 0.0, "high": 0.0}
    rng, rows = np.random.default_rng(seed), max(1, DRAWS_PER_CHUNK // data.size)
    means = np.concatenate([data[rng.integers(0, data.size, size=(min(rows, samples - start), data.size))].mean(axis=1)
                            for start in range(0, samples, rows)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"median": float(np.median(means)), "low": float(low), "high": float(high)}


def fitness_text(f: dict[str, float]) -> str:
    """As ADAS shows a fitness to its meta agent, in percent with one decimal."""
    return (f"95% bootstrap confidence interval ({f['low'] * 100:.1f}%, {f['high'] * 100:.1f}%), "
            f"median {f['median'] * 100:.1f}%")


def member(name: str, thought: str, code: str, generation: int, fitness: Fitness, seed: Sequence[int]) -> dict:
    """An archive member: what the meta agent reads of it, and its bootstrap fitness."""
    return {"name": name, "thought": thought, "code": code, "generation": generation, "mean": fitness.mean,
            "fitness": bootstrap(fitness.scores, seed)}


def member_text(m: dict) -> str:
    """An archive member as the meta agent reads it: name, fitness, thought, code."""
    return ADAS_MEMBER.format(name=m["name"], fitness=fitness_text(m["fitness"]), thought=m["thought"],
                              code=m["code"].rstrip())


def best(archive: list[dict]) -> dict:
    """The member with the highest median (ties: the earlier)."""
    return max(archive, key=lambda m: m["fitness"]["median"])  # max keeps the first of equals


async def initial_archive(cfg: AdasConfig, task: Task, out: Path, executor: ExecutorClient) -> list[dict]:
    """The static baselines of the task's family, each evaluated once (resumable, in order)."""
    log = JsonlLog(out / "initial.jsonl")
    archive = log.read()
    for index, name in enumerate(baselines_for(task.family)[len(archive):], start=len(archive)):
        code = baseline_workflow(name, task.family)
        fitness = await evaluate(out / f"initial_{name}", code, task, cfg.run_config(), executor,
                                 temperature=EXECUTOR_TEMPERATURES[name], seed=[cfg.seed, 0, index])
        archive.append(member(name, BASELINE_THOUGHTS[name], code, 0, fitness, [cfg.seed, 0, index]))
        log.append(archive[-1:])
        _report(f"initial {name}", archive[-1])
    return archive


async def generation(cfg: AdasConfig, task: Task, out: Path, client: ExecutorClient, executor: ExecutorClient,
                     archive: list[dict], n: int) -> dict:
    """Generation n (from 1): propose, reflect twice, check and evaluate with up to debug_max
    attempts; returns its generations.jsonl record ("member": the new member or None)."""
    folder = out / f"gen_{n}"
    optimizer = Optimizer(client, folder / "steps.jsonl", task, ("thought", "name", "reflection"),
                          cfg.optimizer_temperature, cfg.optimizer_max_tokens)
    messages = [{"role": "system", "content": generator_guide(task.family)},
                {"role": "user", "content": ADAS_PROPOSE.format(family=task.family, archive="\n\n".join(
                    member_text(m) for m in archive))}]
    proposal = await optimizer.ask(messages, check_code=False)
    previous = ADAS_PREVIOUS.format(member=member_text(archive[-1])) if n > 1 else ""
    for prompt, check_code in ((ADAS_REFLECT.format(previous=previous), False), (ADAS_REFLECT_AGAIN, True)):
        messages = continued(messages, proposal, prompt)
        proposal = await optimizer.ask(messages, check_code=check_code)
    evaluated, evaluations = None, 0
    for attempt in range(1, cfg.debug_max + 1):
        if proposal.valid:
            fitness = await evaluate(folder / f"gen_{n}-try_{attempt}", proposal.code, task, cfg.run_config(),
                                     executor, seed=[cfg.seed, n, attempt])
            evaluated, evaluations = (proposal, fitness), evaluations + 1
            if fitness.mean >= ALL_ZERO:
                break
            error = ADAS_ALL_ZERO.format(floor=ALL_ZERO, failures=failures_text(fitness.failures))
        else:
            error = "; ".join(proposal.problems)
        if attempt == cfg.debug_max:
            break
        messages = continued(messages, proposal, ADAS_DEBUG.format(error=error))
        proposal = await optimizer.ask(messages)
    new = None
    if evaluated is not None:
        chosen, fitness = evaluated
        new = member(chosen.tags["name"][:100] or f"generation {n}", chosen.tags["thought"], chosen.code, n, fitness,
                     [cfg.seed, n])
    return {"generation": n, "member": new, "replies": optimizer.asked, "evaluations": evaluations,
            "problems": [] if proposal.valid else proposal.problems}


async def search(cfg: AdasConfig, task: Task, out: Path, optimizer: ExecutorClient, executor: ExecutorClient) -> dict:
    """Run (or resume) the search in `out`; returns {"archive", "generations", "best"}."""
    archive = await initial_archive(cfg, task, out, executor)
    log = JsonlLog(out / "generations.jsonl")
    generations = log.read()
    archive += [g["member"] for g in generations if g["member"]]
    write_best(out, best(archive)["code"])
    for n in range(len(generations) + 1, cfg.rounds + 1):
        record = await generation(cfg, task, out, optimizer, executor, archive, n)
        log.append([record])
        generations.append(record)
        if record["member"]:
            archive.append(record["member"])
            write_best(out, best(archive)["code"])
        _report(f"generation {n}", record["member"], record)
    top = best(archive)
    print(f"scoreflow.adas: best: {ascii(top['name'][:60])} (generation {top['generation']}), "
          f"{fitness_text(top['fitness'])} -> {out / 'best_workflow.py'}", file=sys.stderr)
    return {"archive": [{k: v for k, v in m.items() if k != "code"} for m in archive],
            "generations": [{k: v for k, v in g.items() if k != "member"} for g in generations], "best": top["name"]}


def _report(what: str, m: dict | None, record: dict | None = None) -> None:
    """One line per member or generation; never the meta agent's or the workflow's text."""
    spent = f", {record['replies']} meta-agent replies, {record['evaluations']} evaluated" if record else ""
    result = "nothing joined the archive" if m is None else f"fitness: {fitness_text(m['fitness'])}"
    print(f"[adas] {what}{spent} -> {result}", file=sys.stderr, flush=True)
