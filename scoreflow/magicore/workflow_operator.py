"""`MagicoreRefine`: MAgICoRE's coarse-to-fine refinement as a ScoreFlow math operator, a plugin
of the workflow runtime (scoreflow/workflow/host.py imports this module, named there as text in
PLUGIN_MODULES, when it builds a math run's operators; importing it registers the class).

    candidates = [...]                                              # e.g. from Custom calls
    best = await self.magicore_refine(solutions=candidates)         # -> {"response": str}

This is the one module of `scoreflow.magicore` that knows of workflows, and no other module of
the package imports it, so MAgICoRE itself stays a library (tests/project/test_import_graph.py). The run's
executor plays every part: judge ORM and PRM (JudgeRewardModel), Reviewer and Refiner (Agents).
The n candidates are scored; an easy question (difficulty.py, with per-question normalisation: a
workflow has no dataset statistics) is answered by the RM-weighted vote at once, a hard one gets
ITERATIONS rounds of review + rewrite per candidate, rescoring and top-n (loop.refine_until_easy).
The response is the highest-reward chain that gives the voted answer. Cost: 2n judge calls, plus
4n calls per refinement round.

Every request goes through the operator's `Call`, so the run's trace and budgets count it;
it samples at the run's temperature with the executor's other defaults (a `Call` sets no
top-p, seed or max_tokens). Answers are read as in OPEN_MATH: \\boxed{} if present, else the
final number, so GSM8K and MATH workflows both work.
"""

from __future__ import annotations

from scoreflow.executor import ChatResult
from scoreflow.workflow.context import as_text
from scoreflow.workflow.host import register_operator
from scoreflow.workflow.operators import Operator
from scoreflow.workflow.run_context import Call

from .agents import Agents, Ledger, Sampling
from .answers import OPEN_MATH
from .judge_rm import JudgeRewardModel
from .loop import MagicoreConfig, refine_until_easy, score_chains
from .reward import RewardModels

MAX_CANDIDATES = 8
ITERATIONS = 1


class _CallExecutor:
    """An operator `Call` behind the executor interface the agents and the judge use."""

    def __init__(self, call: Call):
        self._call = call

    async def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int | None = None,
                   seed: int | None = None, top_p: float | None = None) -> ChatResult:
        text = await self._call.chat(messages, temperature=temperature)
        return ChatResult((text,), (None,), 0, 0)  # tokens are counted by the Call, in the trace


@register_operator
class MagicoreRefine(Operator):
    async def _run(self, call: Call, solutions: list[str], problem: str | None = None) -> dict:
        items = solutions if isinstance(solutions, (list, tuple)) else [solutions]
        texts = [t for t in (as_text(s) for s in items) if t.strip()]
        if not 1 <= len(texts) <= MAX_CANDIDATES:
            raise ValueError(f"MagicoreRefine takes 1 to {MAX_CANDIDATES} non-empty solutions, got {len(texts)}")
        question, executor = self._or_problem(problem), _CallExecutor(call)
        judge = JudgeRewardModel(executor)
        rms = RewardModels(judge, judge)
        agents = Agents(executor, OPEN_MATH, Sampling(temperature=self._ctx.temperature))
        chains = await score_chains(rms, OPEN_MATH, question, texts, origin=0)
        config = MagicoreConfig(k=len(chains), iterations=ITERATIONS, normalization="question")
        trace = await refine_until_easy(agents, rms, question, chains, config, None, Ledger())
        voted = [c for c in trace.chains if c.answer == trace.answer] or list(trace.chains)
        return {"response": max(voted, key=lambda c: c.reward).text}
