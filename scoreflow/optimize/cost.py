"""Cost-aware scores (ours, beyond the paper): a workflow that solves its question pays for what
its runs cost, so Score-DPO prefers the cheaper of two workflows that both solve it.

    s' = clip(s - λ c / c_ref, 0, 1)   when s > 0;   s' = s   otherwise

s is the workflow's solve rate (the mean of its run scores), c its mean cost over its runs,
taken from the run records (executions.jsonl: prompt and completion tokens, LLM calls) in
--cost-unit, and c_ref the median c of its question's workflows, so that λ (--cost-weight)
means the same on every task. λ = 0 is the paper.

Why this keeps the order Score-DPO learns from. The pairs and Theorem 2 (dpo/loss.py) read only
the scores: P*(w, l) ∝ d(s'_w - s'_l) over pairs with s'_w > s'_l, and the influence I(z) grows
with s'_z while the rewards stay in the theorem's range. The transform changes which workflow is
better, never in a way that puts a wrong one first:
- an unsolved workflow (s = 0) keeps 0, and a solved one keeps s' >= 0: for any λ a solved
  workflow never scores below an unsolved one (it may tie at 0 when it costs more than
  s c_ref / λ, so a very expensive right answer stops being preferred, but is never
  dispreferred to a wrong one);
- at equal cost the order of s is kept (s' is s shifted by the same amount, then clipped);
- at equal s the cheaper workflow scores at least as high, strictly unless both clip.
Theorem 2 itself is about the scores it is given, so it holds for s' as it does for s.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

COST_UNITS = ("tokens", "dollars", "calls")


def run_cost(execution: dict, unit: str, price: tuple[float, float] | None = None) -> float:
    """The cost of one run from its record: prompt + completion tokens, USD at `price` (USD per
    1M prompt and completion tokens), or LLM calls."""
    if unit == "tokens":
        return float(execution["prompt_tokens"] + execution["completion_tokens"])
    if unit == "calls":
        return float(execution["llm_calls"])
    if price is None:
        raise ValueError("--cost-unit dollars needs the executor's price: this executor model has none in the "
                         "price list; use --cost-unit tokens")
    return (execution["prompt_tokens"] * price[0] + execution["completion_tokens"] * price[1]) / 1e6


def mean_costs(executions: list[dict], unit: str, price: tuple[float, float] | None = None) -> dict[str, float]:
    """Workflow id -> mean cost over its runs (every run counts: a failed run was paid for)."""
    runs: dict[str, list[float]] = defaultdict(list)
    for e in executions:
        runs[e["workflow_id"]].append(run_cost(e, unit, price))
    return {w: statistics.fmean(c) for w, c in runs.items()}


def cost_aware(solve: dict[str, float], cost: dict[str, float], question: dict[str, str],
               weight: float) -> dict[str, float]:
    """s' for every workflow with a solve rate: `solve` and `cost` by workflow id, `question`
    the question id of each. A workflow without a cost record keeps s."""
    if weight == 0:
        return dict(solve)
    by_question: dict[str, list[float]] = defaultdict(list)
    for w, c in cost.items():
        if w in solve:
            by_question[question[w]].append(c)
    reference = {q: statistics.median(cs) for q, cs in by_question.items()}
    out = {}
    for w, s in solve.items():
        c_ref = reference.get(question[w])
        if s > 0 and w in cost and c_ref:
            s = min(1.0, max(0.0, s - weight * cost[w] / c_ref))
        out[w] = s
    return out
