"""The results table of a MAgICoRE run: accuracy, cost, and per-iteration behaviour.

From the per-question rows of runner.py (OUT/results.jsonl):
- methods: MAgICoRE after T iterations and every baseline, each with accuracy (mean score),
  LLM calls per question and tokens (prompt + completion, as the server reports them) per
  question; all on the same Solver chains;
- iterations t = 0..T of MAgICoRE: accuracy, the fraction of questions classified hard
  (refined after t), and the cumulative calls and tokens per question up to that vote.
Returned as a JSON-able dict with a "markdown" rendering.
"""

from __future__ import annotations

import dataclasses
from statistics import fmean
from typing import Any

METHOD_NAMES = {"best_of_k": "Best-of-k (ORM)", "self_consistency": "Self-consistency (k-way)",
                "weighted_sc": "Weighted SC (ORM + PRM)", "self_refine": "Self-Refine (chain 0)",
                "self_refine_sc": "Self-Refine + SC"}


def _mean(values: list[float]) -> float:
    return fmean(values) if values else float("nan")


def summarize(rows: list[dict], config: Any, errors: int = 0) -> dict[str, Any]:
    """Aggregate per-question rows (runner.py) into tables; `config` is the MagicoreRunConfig."""
    T, k = config.magicore.iterations, config.magicore.k
    iterations = [{"iteration": t,
                   "accuracy": _mean([r["magicore"]["correct"][t] for r in rows]),
                   "hard": _mean([float(r["magicore"]["hard"][t]) for r in rows]),
                   "calls": _mean([r["magicore"]["calls"][t] for r in rows]),
                   "tokens": _mean([r["magicore"]["tokens"][t] for r in rows])} for t in range(T + 1)]
    ablation = "" if config.magicore.ablation == "none" else f", ablation {config.magicore.ablation}"
    methods = [{"method": f"MAgICoRE (T={T}{ablation})", **{key: iterations[-1][key] for key in ("accuracy", "calls", "tokens")}}]
    for name in config.baselines:
        results = [r["baselines"][name] for r in rows if name in r["baselines"]]
        methods.append({"method": METHOD_NAMES[name], "accuracy": _mean([b["correct"] for b in results]),
                        "calls": _mean([b["calls"] for b in results]),
                        "tokens": _mean([b["prompt_tokens"] + b["completion_tokens"] for b in results])})
    title = (f"MAgICoRE on {config.dataset}: {len(rows)} questions"
             f"{f' ({errors} failed, see errors.jsonl)' if errors else ''}, k={k}, T={T}, "
             f"normalization={config.magicore.normalization}; solver {config.solver}, ORM {config.orm}, "
             f"PRM {config.prm}")
    lines = [title, "", "| method | accuracy | calls / question | tokens / question |", "|---|---|---|---|"]
    lines += [f"| {m['method']} | {m['accuracy']:.3f} | {m['calls']:.1f} | {m['tokens']:.0f} |" for m in methods]
    lines += ["", "| MAgICoRE iteration | accuracy | classified hard | calls / question | tokens / question |",
              "|---|---|---|---|---|"]
    lines += [f"| {i['iteration']} | {i['accuracy']:.3f} | {i['hard']:.2f} | {i['calls']:.1f} | {i['tokens']:.0f} |"
              for i in iterations]
    return {"questions": len(rows), "errors": errors, "config": dataclasses.asdict(config), "methods": methods,
            "iterations": iterations, "markdown": "\n".join(lines)}
