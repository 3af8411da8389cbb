"""The results tables of a MAgICoRE run: accuracy, cost, and behaviour per round.

From the per-question rows of runner.py (OUT/results.jsonl):
- methods: MAgICoRE after T iterations and every baseline, each with accuracy (mean score),
  LLM calls per question and tokens (prompt + completion, as the server reports them) per
  question; all on the same Solver chains but the budget-matched ones (samples of their own);
- rounds: accuracy, calls and tokens per question after each round r of the methods that
  iterate (MAgICoRE's iterations t = 0..T, with the fraction of questions classified hard,
  i.e. refined after t; the Self-Refine baselines' rounds 0..R), cumulative up to that answer.
Returned as a JSON-able dict with a "markdown" rendering. `write_figures` draws the MAgICoRE
paper's two figures (scoreflow/figures.py): accuracy per round (OUT/iterations.png) and, after
a k sweep (sweep.py), accuracy against k (OUT/k_sweep.png, its table in OUT/k_sweep.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from scoreflow.figures import PLOT_HINT, accuracy_against_k, accuracy_per_round

METHOD_NAMES = {"best_of_k": "Best-of-k (ORM)", "self_consistency": "Self-consistency (k-way)",
                "weighted_sc": "Weighted SC (ORM + PRM)", "self_refine": "Self-Refine (chain 0)",
                "self_refine_sc": "Self-Refine + SC", "best_of_n": "Best-of-{n} (ORM, own samples)",
                "self_consistency_n": "Self-consistency ({n}-way, own samples)"}
MAGICORE = "MAgICoRE"


def _mean(values: list[float]) -> float:
    return fmean(values) if values else float("nan")


def _name(method: str, config: Any) -> str:
    return METHOD_NAMES[method].format(n=config.baseline_k)


def summarize(rows: list[dict], config: Any, errors: int = 0) -> dict[str, Any]:
    """Aggregate per-question rows (runner.py) into tables; `config` is the MagicoreRunConfig."""
    T, k, magicore = config.magicore.iterations, config.magicore.k, config.magicore
    iterations = [{"iteration": t,
                   "accuracy": _mean([r["magicore"]["correct"][t] for r in rows]),
                   "hard": _mean([float(r["magicore"]["hard"][t]) for r in rows]),
                   "calls": _mean([r["magicore"]["calls"][t] for r in rows]),
                   "tokens": _mean([r["magicore"]["tokens"][t] for r in rows])} for t in range(T + 1)]
    rounds = {MAGICORE: iterations}
    ablation = "" if magicore.ablation == "none" else f", ablation {magicore.ablation}"
    methods = [{"method": f"{MAGICORE} (T={T}{ablation})",
                **{key: iterations[-1][key] for key in ("accuracy", "calls", "tokens")}}]
    for name in config.baselines:
        results = [r["baselines"][name] for r in rows if name in r["baselines"]]
        methods.append({"method": _name(name, config), "accuracy": _mean([b["correct"] for b in results]),
                        "calls": _mean([b["calls"] for b in results]),
                        "tokens": _mean([b["prompt_tokens"] + b["completion_tokens"] for b in results])})
        if results and "rounds" in results[0]:
            at = [[b["rounds"][t] for b in results] for t in range(len(results[0]["rounds"]))]
            rounds[_name(name, config)] = [{"iteration": t, "accuracy": _mean([e["correct"] for e in entries]),
                                            "calls": _mean([e["calls"] for e in entries]),
                                            "tokens": _mean([e["tokens"] for e in entries])}
                                           for t, entries in enumerate(at)]
    rule = magicore.difficulty_rule + (f", normalization={magicore.normalization}"
                                       if magicore.difficulty_rule == "reference" else "")
    title = (f"MAgICoRE on {config.dataset}: {len(rows)} questions"
             f"{f' ({errors} failed, see errors.jsonl)' if errors else ''}, k={k}, T={T}, "
             f"difficulty rule {rule}; solver {config.solver}, ORM {config.orm}, PRM {config.prm}")
    lines = [title, "", "| method | accuracy | calls / question | tokens / question |", "|---|---|---|---|"]
    lines += [f"| {m['method']} | {m['accuracy']:.3f} | {m['calls']:.1f} | {m['tokens']:.0f} |" for m in methods]
    lines += ["", "| method | round | accuracy | classified hard | calls / question | tokens / question |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {method} | {i['iteration']} | {i['accuracy']:.3f} | "
              f"{format(i['hard'], '.2f') if 'hard' in i else '-'} | {i['calls']:.1f} | {i['tokens']:.0f} |"
              for method, series in rounds.items() for i in series]
    return {"questions": len(rows), "errors": errors, "config": dataclasses.asdict(config), "methods": methods,
            "iterations": iterations, "rounds": rounds, "markdown": "\n".join(lines)}


def round_series(summary: dict[str, Any]) -> dict[str, list[float]]:
    """Accuracy per round of MAgICoRE, Best-of-k (one answer: the same at every round, over
    MAgICoRE's rounds) and Self-Refine + SC, those of them the run has."""
    rounds, methods = summary["rounds"], {m["method"]: m for m in summary["methods"]}
    series = {MAGICORE: [i["accuracy"] for i in rounds[MAGICORE]]}
    best = METHOD_NAMES["best_of_k"]
    if best in methods:
        series[best] = [methods[best]["accuracy"]] * len(rounds[MAGICORE])
    sr_sc = METHOD_NAMES["self_refine_sc"]
    if sr_sc in rounds:
        series[sr_sc] = [i["accuracy"] for i in rounds[sr_sc]]
    return series


def sweep_table(sweep: dict[str, list[tuple[int, float]]]) -> str:
    """A k sweep's accuracies (method -> (k, accuracy) points) as a markdown table, one row per k."""
    methods, ks = list(sweep), [k for k, _ in next(iter(sweep.values()))]
    lines = ["| k | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {k} | " + " | ".join(f"{sweep[m][i][1]:.3f}" for m in methods) + " |" for i, k in enumerate(ks)]
    return "\n".join(lines)


def write_figures(summary: dict[str, Any], sweep: dict[str, list[tuple[int, float]]] | None, out: Path) -> None:
    """OUT/iterations.png and, with a sweep, OUT/k_sweep.md and OUT/k_sweep.png; without
    matplotlib the table only, and one line saying how to get the figures."""
    dataset = summary["config"]["dataset"]
    paths = [accuracy_per_round(round_series(summary), f"{dataset}: accuracy per refinement round",
                                out / "iterations.png")]
    if sweep is not None:
        table = sweep_table(sweep)
        (out / "k_sweep.md").write_text(table + "\n")
        print("\n" + table, flush=True)
        paths.append(accuracy_against_k(sweep, f"{dataset}: accuracy against k", out / "k_sweep.png"))
    print(f"figures: {', '.join(map(str, paths))}" if None not in paths else
          f"figures: skipped, matplotlib is not installed ({PLOT_HINT} to get them)", file=sys.stderr, flush=True)
