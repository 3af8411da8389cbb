"""A controlled experiment of the optimisation itself: Score-DPO vs plain DPO vs no training.

    python bench/bench_learning.py --real [--pilot]   # real executions instead: see learning_real.py

    python bench/bench_learning.py [--generator qwen2.5-coder-0.5b-instruct --limit 32 --k 4 --pairs 64
                                    --iterations 2 --grouping question --epochs 2] --out runs/bench-learning

The executor is replaced by a scorer whose expected score for a workflow is a known function
of its structure, observed with the noise of a real executor: each of 3 runs solves with
probability p(w) (a Bernoulli draw), and the workflow's score is the mean, as in PAPERS.md §S4.2.

    p(w) = 0                                           invalid workflow (PAPERS.md §S3)
    p(w) = min(0.95, 0.3 + 0.2 [ScEnsemble] + 0.15 [Review] + 0.1 [Programmer]
                     + 0.04 min(calls, 6))             otherwise

([Op]: run_workflow awaits that operator somewhere; calls: awaited operator call sites.)
The real generator (an embedded model with its LoRA) and the real stages of `scoreflow.train`
run unchanged: k workflows per question, pairs, P*, Score-DPO. Three arms on the same
questions, seeds and budget:

    score_dpo   P* ∝ (s_w − s_l)^3, Score-DPO loss      (the paper)
    dpo         P* = P (uniform), plain DPO loss          (the paper's ablation)
    none        no training                               (noise floor)
    cost        score_dpo on cost-aware scores, --cost-weight λ (ours; optimize/cost.py)

Every run of a workflow costs a known number of executor tokens: the sum over its awaited call
sites of COST[operator] (a ScEnsemble or Programmer call costs more than a Custom one), so the
cost arm can be compared with score_dpo (λ = 0) question by question: its mean cost per
workflow should fall, its true p stay within its interval (`--arms score_dpo cost none`).

After each iteration the updated generator samples fresh workflows (the next iteration's
samples). Iteration i samples with the same seeds in every arm, and iteration 0 is the same
policy, so each arm is compared with "none" question by question. Per arm and iteration the
table gives the mean true p(w) with its 95% interval, the valid rate, the operator-use rate
(workflows whose run_workflow awaits an operator, valid or not) and the paired difference to
"none". Intervals treat the question as the unit (the k samples of one question share its
prompt): mean ± t(0.975, n−1) · sd / √n over the n per-question means. Resumable: rerun the
same command.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import random
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from scoreflow.optimize import stages
from scoreflow.optimize.config import EMBEDDED, RunConfig
from scoreflow.optimize.generator import LocalGenerator
from scoreflow.tasks import load_task

RUNS = 3
ARMS = {"score_dpo": {"loss": "score_dpo", "pair_gap": "cubic"}, "dpo": {"loss": "dpo", "pair_gap": "uniform"},
        "none": None, "cost": {"loss": "score_dpo", "pair_gap": "cubic", "cost": True}}
BASE, PER_CALL, CAP = 0.3, 0.04, 0.95
BONUS = {"ScEnsemble": 0.2, "Review": 0.15, "Programmer": 0.1}
COST, OTHER_COST = {"Custom": 200, "AnswerGenerate": 250, "ScEnsemble": 600, "Review": 400, "Revise": 400,
                    "Programmer": 500}, 300  # executor tokens per call of each operator; any other: OTHER_COST


def operators_awaited(code: str | None, anywhere: bool = False) -> list[str] | None:
    """Operator class names that run_workflow awaits, one per call site (self.<attr>(...) with
    self.<attr> = operator.<Name>(...) in the class); None when the code has no run_workflow.
    anywhere=True counts the awaits of every method (a baseline's run_workflow awaits its own
    helper methods, which call the operators)."""
    try:
        tree = ast.parse(code or "")
    except SyntaxError:
        return None
    bound = {}  # self.<attr> = operator.<Name>(config)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and isinstance(node.targets[0], ast.Attribute)):
            bound[node.targets[0].attr] = node.value.func.attr
    run = next((n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "run_workflow"), None)
    if run is None:
        return None
    used = [bound.get(n.value.func.attr) for n in ast.walk(tree if anywhere else run) if isinstance(n, ast.Await)
            and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)]
    return [u for u in used if u is not None]


def true_score(workflow: dict) -> float:
    """p(w) of the module docstring, read off the workflow's AST."""
    used = operators_awaited(workflow["code"]) if workflow["valid"] else None
    if used is None:
        return 0.0
    p = BASE + sum(bonus for name, bonus in BONUS.items() if name in used) + PER_CALL * min(len(used), 6)
    return min(CAP, p)


def known_cost(workflow: dict) -> float:
    """Executor tokens of one run: COST of each awaited call site (0 for an invalid workflow)."""
    used = operators_awaited(workflow["code"]) if workflow["valid"] else None
    return float(sum(COST.get(name, OTHER_COST) for name in used or []))


def observed_runs(workflow: dict, seed: int) -> list[float]:
    """RUNS Bernoulli(p(w)) solves, seeded by the workflow id (a rerun draws the same)."""
    p, rng = true_score(workflow), random.Random(f"{seed}:{workflow['id']}")
    return [float(rng.random() < p) for _ in range(RUNS)]


def t_quantile(df: int) -> float:
    """t(0.975, df) by the Cornish-Fisher expansion around the normal quantile (error < 2e-3 for df >= 5)."""
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def interval(per_question: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width over per-question values (the question is the unit)."""
    n = len(per_question)
    mean = statistics.fmean(per_question)
    return mean, (t_quantile(n - 1) * statistics.stdev(per_question) / math.sqrt(n) if n > 1 else math.inf)


def by_question(workflows: list[dict], value) -> dict[str, float]:
    """Per-question mean of value(workflow)."""
    groups: dict[str, list[float]] = {}
    for w in workflows:
        groups.setdefault(w["question_id"], []).append(float(value(w)))
    return {q: statistics.fmean(v) for q, v in groups.items()}


def run_arm(arm: str, cfg: RunConfig, task, out: Path) -> dict[int, list[dict]]:
    """Iterations 0..T of one arm: the workflows each iteration sampled, keyed by iteration."""
    sampled = {}
    for i in range(cfg.iterations + 1):
        trained = out / arm / f"iter_{i - 1}" / "adapter" if i and ARMS[arm] is not None else None
        generator = LocalGenerator(cfg, trained)  # base + the adapter the previous iteration wrote
        it = stages.Iteration(i, out / arm / f"iter_{i}", cfg, task, label=f"{arm} iter {i}")
        shared = out / "score_dpo" / "iter_0" / "workflows.jsonl"
        if i == 0 and arm != "score_dpo" and shared.exists() and not (it.dir / "workflows.jsonl").exists():
            it.dir.mkdir(parents=True, exist_ok=True)  # iteration 0 is the same policy and seeds for every arm
            shutil.copy(shared, it.dir / "workflows.jsonl")
        t0 = time.monotonic()
        workflows = sampled[i] = stages.generate(it, generator)
        row = {"arm": arm, "iteration": i, "true": statistics.fmean(map(true_score, workflows)),
               "cost": statistics.fmean(map(known_cost, workflows)),
               "valid": statistics.fmean(w["valid"] for w in workflows), "generate_s": round(time.monotonic() - t0, 1)}
        if i < cfg.iterations and ARMS[arm] is not None:
            executions = [{"workflow_id": w["id"], "question_id": w["question_id"], "run": r, "score": s,
                           "prompt_tokens": known_cost(w), "completion_tokens": 0,
                           "llm_calls": len(operators_awaited(w["code"]) or [])}
                          for w in workflows if w["valid"] for r, s in enumerate(observed_runs(w, cfg.seed))]
            scores = stages.score(it, workflows, executions)
            t0 = time.monotonic()
            pairs = stages.pairs(it, workflows, scores)
            history = stages.train(it, generator, workflows, pairs)
            row |= {"pairs": len(pairs), "distinct_pairs": len({(p["winner_id"], p["loser_id"]) for p in pairs}),
                    "loss": statistics.fmean(m["loss"] for m in history) if history else None,
                    "train_s": round(time.monotonic() - t0, 1)}
        print(json.dumps(row), flush=True)
        del generator
    return sampled


def summarise(sampled: dict[str, dict[int, list[dict]]]) -> list[dict]:
    """One row per (arm, iteration): true p, valid and operator-use rates, paired difference to none."""
    rows = []
    for arm, iterations in sampled.items():
        for i, workflows in iterations.items():
            true, cost = by_question(workflows, true_score), by_question(workflows, known_cost)
            mean, half = interval(list(true.values()))
            row = {"arm": arm, "iteration": i, "n": len(workflows), "questions": len(true), "true": mean,
                   "true_ci": half, "valid": statistics.fmean(w["valid"] for w in workflows),
                   "operator_use": statistics.fmean(bool(operators_awaited(w["code"])) for w in workflows)}
            row["cost"], row["cost_ci"] = interval(list(cost.values()))
            base = sampled.get("none", {}).get(i)
            if base is not None and arm != "none":
                none = by_question(base, true_score)
                row["diff"], row["diff_ci"] = interval([true[q] - none[q] for q in true])
            paper = sampled.get("score_dpo", {}).get(i)
            if paper is not None and arm == "cost":  # λ > 0 against λ = 0, question by question
                p0, c0 = by_question(paper, true_score), by_question(paper, known_cost)
                row["vs_paper"], row["vs_paper_ci"] = interval([true[q] - p0[q] for q in true])
                row["cost_vs_paper"], row["cost_vs_paper_ci"] = interval([cost[q] - c0[q] for q in cost])
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arm | iteration | mean true p ± 95% | valid | operator use | paired diff to none ± 95% "
             "| tokens / run ± 95% | cost arm vs score_dpo: p; tokens ± 95% |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["iteration"], list(ARMS).index(r["arm"]))):
        diff = f"{r['diff']:+.3f} ± {r['diff_ci']:.3f}" if "diff" in r else "-"
        paper = (f"{r['vs_paper']:+.3f} ± {r['vs_paper_ci']:.3f}; {r['cost_vs_paper']:+.0f} ± "
                 f"{r['cost_vs_paper_ci']:.0f}") if "vs_paper" in r else "-"
        lines.append(f"| {r['arm']} | {r['iteration']} | {r['true']:.3f} ± {r['true_ci']:.3f} | {r['valid']:.2f} | "
                     f"{r['operator_use']:.2f} | {diff} | {r['cost']:.0f} ± {r['cost_ci']:.0f} | {paper} |")
    return "\n".join(lines)


def main() -> None:
    if "--real" in sys.argv[1:]:
        import learning_real  # the same directory: real executions, through scoreflow's commands

        return learning_real.main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="--real: the experiment on real executions instead (learning_real.py; "
                                        "bench/bench_learning.py --real --help)")
    ap.add_argument("--generator", default="qwen2.5-coder-0.5b-instruct", help="embedded model name or HF folder")
    ap.add_argument("--limit", type=int, default=32, help="GSM8K validation questions")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--grouping", default="question", choices=("pair", "question"))
    ap.add_argument("--epochs", type=int, default=2, help="passes over each iteration's pairs (the preset: 1)")
    ap.add_argument("--arms", nargs="+", default=["score_dpo", "dpo", "none"], choices=list(ARMS))
    ap.add_argument("--cost-weight", type=float, default=0.5, help="λ of the cost arm")
    ap.add_argument("--out", default="runs/bench-learning")
    args = ap.parse_args()
    out = Path(args.out)
    task = load_task("gsm8k", "validate")
    task = replace(task, questions=task.questions[: args.limit])
    base = replace(RunConfig(**{k: v for k, v in EMBEDDED.settings.items() if k != "dpo"}), generator=args.generator,
                   limit=args.limit, k=args.k, pairs=args.pairs, iterations=args.iterations, valid_floor=0.0)
    print(f"# bench_learning: {args.generator}, {args.limit} GSM8K questions, k={args.k}, {RUNS} runs, "
          f"{args.pairs} pairs, {args.iterations} iterations, {args.grouping} grouping, {args.epochs} epochs, "
          f"generator temperature "
          f"{base.temperature}, lr {EMBEDDED.settings['dpo'].lr}; {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    sampled, start = {}, time.monotonic()
    for arm in args.arms:
        settings = ARMS[arm] or {}
        dpo = replace(EMBEDDED.settings["dpo"], loss=settings.get("loss", "score_dpo"), dpo_grouping=args.grouping,
                      epochs=args.epochs)
        cfg = replace(base, dpo=dpo, pair_gap=settings.get("pair_gap", "cubic"),
                      cost_weight=args.cost_weight if settings.get("cost") else 0.0)
        sampled[arm] = run_arm(arm, cfg, task, out)
    rows = summarise(sampled)
    print(f"\n{table(rows)}\n\nwall {time.monotonic() - start:.0f} s")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
