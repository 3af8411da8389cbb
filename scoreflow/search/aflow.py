"""AFlow (Zhang et al. 2024, "AFlow: Automating Agentic Workflow Generation"): a tree search over
code workflows in the style of Monte Carlo tree search, on our parts. Round 1 is the task's
template workflow (one Custom call, PAPERS.md §S2), evaluated. Every later round:

1. selection: a parent among round 1 and the best other rounds (CANDIDATES in all, ordered by
   score, ties to the earlier round), drawn with the paper's soft mixed probability
   P(i) = λ/n + (1 − λ)·softmax(α·(s − s_max))_i over their scores s, in percent;
2. expansion: the optimiser reads the parent, its score, its experience (the modifications tried
   on it and whether each raised its score) and a few of its wrong runs, and writes one
   modification; a child that fails its checks (optimizer.py) or repeats a modification of its
   parent goes back with the problem, up to --attempts replies; a round left without a valid
   child adds none and the search goes on;
3. evaluation: the child on the validation split, R runs per question (fitness.py);
4. backpropagation: the experience of the parent records the child's score and whether it
   beat the parent's.

It stops after --rounds rounds after the template's (as the reference's loop: round 1 plus
max_rounds children), or earlier, with --early-stop, when the mean of the top TOP_K round scores
has not moved by more than Z standard errors for PATIENCE rounds in a row (`converged`).
Every step is on disk before the next: a round's optimiser replies in OUT/round_r/steps.jsonl as
they come, its runs in OUT/round_r/ (the execution stage's files), its record in
OUT/rounds.jsonl (the per-round log) when it ends; a search killed anywhere resumes there. The
parent draw is seeded by (seed, round), so a resumed round draws the same parent. The best
round's workflow is OUT/best_workflow.py.

Constants, from FoundationAgents/MetaGPT metagpt/ext/aflow/ (and examples/aflow/optimize.py):
    LAMBDA 0.3, ALPHA 0.2, scores x100       scripts/optimizer_utils/data_utils.py, _compute_probabilities
                                             and select_round (`item["score"] * 100`)
    CANDIDATES 4 (round 1 + best 3 others)   data_utils.get_top_rounds(sample), --sample 4 in optimize.py
    TOP_K 3, Z 0, PATIENCE 5                 scripts/optimizer_utils/convergence_utils.py check_convergence
                                             (z=0, consecutive_rounds=5), called with top_k=3 in optimizer.py
    5 runs, 20 rounds, early stop on         scripts/optimizer.py, optimize.py (--validation_rounds,
                                             --max_rounds, --check_convergence): config.AflowConfig
    3 wrong runs shown                       data_utils.load_log: fitness.FAILURES_SHOWN
    a repeated modification is refused       scripts/optimizer_utils/experience_utils.py check_modification
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..executor import ExecutorClient
from ..rundir import JsonlLog
from ..tasks import Task
from ..workflow.prompts import generator_guide, template_workflow
from .command import write_best
from .config import AflowConfig
from .fitness import Fitness, evaluate
from .optimizer import Optimizer, Proposal, continued
from .prompts import (AFLOW_EXPAND, AFLOW_EXPERIENCE, AFLOW_NO_EXPERIENCE, AFLOW_REPEATED, AFLOW_RETRY, AFLOW_TRIED,
                      failures_text)

LAMBDA = 0.3
ALPHA = 0.2
SCORE_SCALE = 100.0  # the reference's scores are percentages when selection reads them
CANDIDATES = 4
TOP_K = 3
Z = 0.0
PATIENCE = 5


def selection_probabilities(scores: Sequence[float]) -> np.ndarray:
    """P(i) = λ/n + (1 − λ)·exp(α(s_i − s_max)) / Σ_j exp(α(s_j − s_max)), s in percent."""
    s = np.asarray(scores, dtype=np.float64) * SCORE_SCALE
    weights = np.exp(ALPHA * (s - s.max()))
    p = LAMBDA / len(s) + (1 - LAMBDA) * weights / weights.sum()
    return p / p.sum()


def candidates(rounds: list[dict]) -> list[dict]:
    """The rounds a parent is drawn from: round 1 and the best CANDIDATES − 1 other evaluated
    rounds, best first (ties: the earlier round)."""
    ranked = sorted((r for r in rounds if r["score"] is not None), key=lambda r: (-r["score"], r["round"]))
    first = [r for r in ranked if r["round"] == 1]
    return sorted(first + [r for r in ranked if r["round"] != 1][: CANDIDATES - len(first)],
                  key=lambda r: (-r["score"], r["round"]))


def select(rounds: list[dict], seed: int, round_: int) -> dict:
    """The parent of round `round_`, drawn with selection_probabilities, seeded by (seed, round)."""
    pool = candidates(rounds)
    return pool[np.random.default_rng([seed, round_]).choice(len(pool), p=selection_probabilities(
        [r["score"] for r in pool]))]


def converged(scores: Sequence[tuple[float, float]], top_k: int = TOP_K, z: float = Z,
              patience: int = PATIENCE) -> bool:
    """AFlow's convergence rule over (mean, spread) of the evaluated rounds, in round order: after
    each round, Y = the mean of the top_k means so far, σ_Y = sqrt(Σ spread²) / top_k; converged
    once |ΔY| <= z·sqrt(σ_Y² + σ_Y,prev²) held for `patience` rounds in a row. Not before top_k + 1
    rounds."""
    if len(scores) < top_k + 1:
        return False
    streak, previous = 0, None
    for i in range(len(scores)):
        top = sorted(scores[: i + 1], key=lambda s: -s[0])[:top_k]
        y, sigma = statistics.fmean(m for m, _ in top), math.sqrt(sum(sd * sd for _, sd in top)) / top_k
        if previous is not None:
            streak = streak + 1 if abs(y - previous[0]) <= z * math.hypot(sigma, previous[1]) else 0
            if streak >= patience:
                return True
        previous = (y, sigma)
    return False


def experience(rounds: list[dict], parent: dict) -> list[dict]:
    """The evaluated children of `parent`: {modification, score, raised} each, in round order."""
    return [{"modification": r["modification"], "score": r["score"], "raised": r["score"] > parent["score"]}
            for r in rounds if r["parent"] == parent["round"] and r["score"] is not None]


def expand_prompt(family: str, parent: dict, tried: list[dict]) -> str:
    """What the optimiser reads of `parent`: its code and score, its experience, its wrong runs."""
    lines = "\n".join(AFLOW_TRIED[t["raised"]].format(**t) for t in tried)
    return AFLOW_EXPAND.format(family=family, score=parent["score"], code=parent["code"].rstrip(),
                               experience=AFLOW_EXPERIENCE.format(score=parent["score"], tried=lines) if tried
                               else AFLOW_NO_EXPERIENCE, failures=failures_text(parent["failures"]))


async def expand(cfg: AflowConfig, task: Task, out: Path, client: ExecutorClient, rounds: list[dict], parent: dict,
                 round_: int) -> tuple[Proposal | None, int, list[str]]:
    """(the child, or None; optimiser replies spent; the last reply's problems)."""
    optimizer = Optimizer(client, out / f"round_{round_}" / "steps.jsonl", task, ("modification",),
                          cfg.optimizer_temperature, cfg.optimizer_max_tokens)
    tried = experience(rounds, parent)
    messages = [{"role": "system", "content": generator_guide(task.family)},
                {"role": "user", "content": expand_prompt(task.family, parent, tried)}]
    problems: list[str] = []
    for _ in range(cfg.attempts):
        proposal = await optimizer.ask(messages)
        modification = proposal.tags["modification"]
        problems = proposal.problems + ([AFLOW_REPEATED] if modification and modification in
                                        {t["modification"] for t in tried} else [])
        if proposal.valid and not problems:
            return proposal, optimizer.asked, []
        messages = continued(messages, proposal, AFLOW_RETRY.format(problems="; ".join(problems)))
    return None, optimizer.asked, problems


def round_record(round_: int, parent: dict | None, code: str | None, modification: str, fitness: Fitness | None,
                 replies: int, problems: list[str]) -> dict:
    """A line of rounds.jsonl."""
    return {"round": round_, "parent": parent and parent["round"], "parent_score": parent and parent["score"],
            "modification": modification, "code": code, "score": fitness and fitness.mean,
            "spread": fitness and fitness.spread, "run_means": fitness and fitness.run_means,
            "failures": fitness.failures if fitness else [], "replies": replies, "problems": problems}


def best(rounds: list[dict]) -> dict:
    """The evaluated round with the highest score (ties: the earlier)."""
    return max((r for r in rounds if r["score"] is not None), key=lambda r: (r["score"], -r["round"]))


async def search(cfg: AflowConfig, task: Task, out: Path, optimizer: ExecutorClient, executor: ExecutorClient) -> dict:
    """Run (or resume) the search in `out`; returns {"rounds", "best_round", "best_score", "stopped"}."""
    log, settings = JsonlLog(out / "rounds.jsonl"), cfg.run_config()
    rounds = log.read()
    if not rounds:
        code = template_workflow(task.family)
        fitness = await evaluate(out / "round_1", code, task, settings, executor, seed=[cfg.seed, 1])
        rounds = [round_record(1, None, code, "the template", fitness, 0, [])]
        log.append(rounds)
        _report(rounds[-1])
    stopped = "rounds"
    while len(rounds) <= cfg.rounds:
        if cfg.early_stop and converged([(r["score"], r["spread"]) for r in rounds if r["score"] is not None]):
            stopped = "converged"
            break
        round_ = len(rounds) + 1
        parent = select(rounds, cfg.seed, round_)
        child, replies, problems = await expand(cfg, task, out, optimizer, rounds, parent, round_)
        fitness = None if child is None else await evaluate(out / f"round_{round_}", child.code, task, settings,
                                                             executor, seed=[cfg.seed, round_])
        rounds.append(round_record(round_, parent, child and child.code, child.tags["modification"] if child else "",
                                   fitness, replies, problems))
        log.append(rounds[-1:])
        _report(rounds[-1])
        write_best(out, best(rounds)["code"])
    top = best(rounds)
    write_best(out, top["code"])
    print(f"scoreflow.aflow: stopped ({'converged' if stopped == 'converged' else f'{cfg.rounds} rounds'}); best: "
          f"round {top['round']}, score {top['score']:.3f} -> {out / 'best_workflow.py'}", file=sys.stderr)
    return {"rounds": [{k: v for k, v in r.items() if k not in ("code", "failures")} for r in rounds],
            "best_round": top["round"], "best_score": top["score"], "stopped": stopped}


def _report(r: dict) -> None:
    """One line per round; never the optimiser's or the workflow's text."""
    origin = "the template" if r["parent"] is None else f"parent round {r['parent']} ({r['parent_score']:.3f})"
    result = "no valid child" if r["score"] is None else f"score {r['score']:.3f} ± {r['spread']:.3f}"
    print(f"[aflow] round {r['round']}: {origin}, {r['replies']} optimiser replies -> {result}", file=sys.stderr,
          flush=True)
