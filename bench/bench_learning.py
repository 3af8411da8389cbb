"""A controlled experiment of the optimisation itself: Score-DPO vs plain DPO vs no training.

    python bench/bench_learning.py [--limit 16 --k 4 --pairs 32 --iterations 3] --out runs/bench-learning

The executor is replaced by a scorer whose expected score for a workflow is a known function
of its structure, observed with the noise of a real executor: each of 3 runs solves with
probability p(w) (a Bernoulli draw), and the workflow's score is the mean, as in SPEC A4.2.

    p(w) = 0                                           invalid workflow (SPEC A3)
    p(w) = min(0.95, 0.3 + 0.2 [ScEnsemble] + 0.15 [Review] + 0.1 [Programmer]
                     + 0.04 min(calls, 6))             otherwise

([Op]: run_workflow awaits that operator somewhere; calls: awaited operator call sites.)
The real generator (the default model with its LoRA) and the real stages of
`scoreflow.train` run unchanged: k workflows per question, pairs, P*, Score-DPO. Three arms on
the same questions, seeds and budget:

    score_dpo   P* ∝ (s_w − s_l)^3, Score-DPO loss      (the paper)
    dpo         P* = P (uniform), plain DPO loss          (the paper's ablation)
    none        no training                               (noise floor)

After each iteration the updated generator samples fresh workflows (the next iteration's
samples), and the table reports their mean TRUE p(w), valid rate and observed score.
Iteration 0 is the same for every arm (same base policy, same seeds). Resumable: rerun the
same command.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import random
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from scoreflow.optimize import stages
from scoreflow.optimize.config import EMBEDDED, RunConfig
from scoreflow.optimize.generator import LocalGenerator
from scoreflow.tasks import load_task

RUNS = 3
ARMS = {"score_dpo": dict(loss="score_dpo", pair_gap="cubic"), "dpo": dict(loss="dpo", pair_gap="uniform"),
        "none": None}
BASE, PER_CALL, CAP = 0.3, 0.04, 0.95
BONUS = {"ScEnsemble": 0.2, "Review": 0.15, "Programmer": 0.1}


def true_score(workflow: dict) -> float:
    """p(w) of the module docstring, read off the workflow's AST."""
    if not workflow["valid"]:
        return 0.0
    tree = ast.parse(workflow["code"])
    bound = {}  # self.<attr> = operator.<Name>(config)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and isinstance(node.targets[0], ast.Attribute)):
            bound[node.targets[0].attr] = node.value.func.attr
    run = next(n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "run_workflow")
    used = [bound.get(n.value.func.attr) for n in ast.walk(run) if isinstance(n, ast.Await)
            and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)]
    used = [u for u in used if u is not None]
    p = BASE + sum(bonus for name, bonus in BONUS.items() if name in used) + PER_CALL * min(len(used), 6)
    return min(CAP, p)


def observed_runs(workflow: dict, seed: int) -> list[float]:
    """RUNS Bernoulli(p(w)) solves, seeded by the workflow id (a rerun draws the same)."""
    p, rng = true_score(workflow), random.Random(f"{seed}:{workflow['id']}")
    return [float(rng.random() < p) for _ in range(RUNS)]


def run_arm(arm: str, cfg: RunConfig, task, out: Path) -> list[dict]:
    """Iterations 0..T of one arm; a row per iteration about its freshly sampled workflows."""
    rows = []
    for i in range(cfg.iterations + 1):
        trained = out / arm / f"iter_{i - 1}" / "adapter" if i and ARMS[arm] is not None else None
        generator = LocalGenerator(cfg, trained)  # base + the adapter the previous iteration wrote
        it = stages.Iteration(i, out / arm / f"iter_{i}", cfg, task, label=f"{arm} iter {i}")
        shared = out / "score_dpo" / "iter_0" / "workflows.jsonl"
        if i == 0 and arm != "score_dpo" and shared.exists() and not (it.dir / "workflows.jsonl").exists():
            it.dir.mkdir(parents=True, exist_ok=True)  # iteration 0 is the same policy and seeds for every arm
            shutil.copy(shared, it.dir / "workflows.jsonl")
        t0 = time.monotonic()
        workflows = stages.generate(it, generator)
        t_gen = time.monotonic() - t0
        executions = [{"workflow_id": w["id"], "question_id": w["question_id"], "run": r, "score": s}
                      for w in workflows if w["valid"] for r, s in enumerate(observed_runs(w, cfg.seed))]
        scores = stages.score(it, workflows, executions)
        row = {"arm": arm, "iteration": i, "true": statistics.fmean(true_score(w) for w in workflows),
               "valid": statistics.fmean(w["valid"] for w in workflows),
               "observed": statistics.fmean(s["score"] for s in scores), "generate_s": round(t_gen, 1)}
        if i < cfg.iterations and ARMS[arm] is not None:
            t0 = time.monotonic()
            pairs = stages.pairs(it, workflows, scores)
            history = stages.train(it, generator, workflows, pairs)
            row |= {"pairs": len(pairs), "loss": statistics.fmean(m["loss"] for m in history) if history else None,
                    "train_s": round(time.monotonic() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], iterations: int) -> str:
    cell = {(r["arm"], r["iteration"]): r for r in rows}
    lines = ["| iteration | " + " | ".join(f"{a}: true p (valid, observed)" for a in ARMS) + " |",
             "|---|" + "---|" * len(ARMS)]
    for i in range(iterations + 1):
        cells = [f"{c['true']:.3f} ({c['valid']:.2f}, {c['observed']:.3f})" if (c := cell.get((a, i))) else "-"
                 for a in ARMS]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=16, help="GSM8K validation questions")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", default="runs/bench-learning")
    args = ap.parse_args()
    out = Path(args.out)
    task = load_task("gsm8k", "validate")
    task = replace(task, questions=task.questions[: args.limit])
    base = replace(RunConfig(**{k: v for k, v in EMBEDDED.items() if k != "dpo"}), limit=args.limit, k=args.k,
                   pairs=args.pairs, iterations=args.iterations, valid_floor=0.0)
    print(f"# bench_learning: {args.limit} GSM8K questions, k={args.k}, {RUNS} runs, {args.pairs} pairs, "
          f"{args.iterations} iterations, generator temperature {base.temperature}, lr {EMBEDDED['dpo'].lr}; "
          f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows, start = [], time.monotonic()
    for arm in args.arms:
        settings = ARMS[arm] or {}
        dpo = replace(EMBEDDED["dpo"], loss=settings.get("loss", "score_dpo"))
        cfg = replace(base, dpo=dpo, pair_gap=settings.get("pair_gap", "cubic"))
        rows += run_arm(arm, cfg, task, out)
    print(f"\n{table(rows, args.iterations)}\n\nwall {time.monotonic() - start:.0f} s")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
