"""A scripted MAgICoRE world for the loop and run tests: a loopback endpoint that replies by
role and content (scoreflow.testing.scripted_server), a table-driven reward model, and the
chains they know.

Solver chains by question (chain i is the reply to seed i, mod 4), with (ORM, PRM steps):

    "hard"   HARD: answers 1, 2, 3, 4, ORM 0.2, 0.2, 0.2, 0.3,  neither condition holds, in any order
             PRM 0.1, 0.1, 0.1, 0.05
    "easy"   EASY x 4: one answer, 5                           condition 2 only
    "mixed"  MIXED: answers 1..4, chain 0 scored well by both   condition 1 only
    "split"  SPLIT: answers 1..4, chain 0 scored high by the ORM but low by the PRM:
             condition 1 holds for the ORM alone, so the question is hard by the paper's rule,
             easy by the reference's combined reward and by the ORM alone
The Refiner (or the joint agent) answers by the answer of the chain it rewrites, as
`ScriptedServer.refine_to` says: 1-3 -> FIXED, 4 -> AGAIN, 5 -> EASY, 7 -> FIXED by default.
"""

from __future__ import annotations

import asyncio
import re

from scoreflow.executor import ExecutorClient
from scoreflow.magicore import (FORMATS, Agents, Ledger, MagicoreConfig, OutcomeRewardModel, ProcessRewardModel,
                                RewardModels, RewardStats, Sampling, refine_until_easy, solve)
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion

HARD = ["a\n\n\\boxed{1}", "b\n\n\\boxed{2}", "c\n\n\\boxed{3}", "d\n\n\\boxed{4}"]
MIXED = ["m\n\n\\boxed{1}", "n\n\n\\boxed{2}", "o\n\n\\boxed{3}", "p\n\n\\boxed{4}"]
SPLIT = ["s\n\n\\boxed{1}", "t\n\n\\boxed{2}", "u\n\n\\boxed{3}", "v\n\n\\boxed{4}"]
FIXED, AGAIN, EASY = "fixed\n\n\\boxed{7}", "again\n\n\\boxed{4}", "e\n\n\\boxed{5}"
WORSE = {a: f"worse {a}\n\n\\boxed{{{a}}}" for a in "1234"}          # scored below every HARD chain
FLATTERING = {a: f"flattering {a}\n\n\\boxed{{{a}}}" for a in "1234"}  # low ORM, perfect PRM
SCORES = {
    HARD[0]: (0.2, (0.5, 0.2)), HARD[1]: (0.2, (0.5, 0.2)), HARD[2]: (0.2, (0.5, 0.2)),  # PRM 0.1, r = 0.3
    HARD[3]: (0.3, (0.5, 0.1)),   # PRM 0.05, r = 0.35: best by the ORM, worst by the PRM
    MIXED[0]: (0.9, (0.9, 1.0)), **{t: (0.25, (0.25, 1.0)) for t in MIXED[1:]},
    SPLIT[0]: (0.9, (0.1, 1.0)), **{t: (0.25, (0.6, 1.0)) for t in SPLIT[1:]},
    FIXED: (0.9, (0.9, 0.9)),     # r = 1.71
    AGAIN: (0.3, (0.5, 0.1)),     # ties with HARD[3]
    EASY: (0.8, (0.9, 0.9)),      # r = 1.61
    **{t: (0.1, (0.1, 0.1)) for t in WORSE.values()},
    **{t: (0.15, (1.0, 1.0)) for t in FLATTERING.values()},
}
QUESTIONS = {"hard": HARD, "easy": [EASY] * 4, "mixed": MIXED, "split": SPLIT}
DEFAULT_REFINE = {"1": FIXED, "2": FIXED, "3": FIXED, "4": AGAIN, "5": EASY, "7": FIXED}
CORRECTED = "Corrected solution:"


class TableRM(OutcomeRewardModel, ProcessRewardModel):
    """Scores looked up by the exact chain text (an unknown text fails the test)."""

    async def orm(self, question, solutions):
        return [SCORES[s][0] for s in solutions]

    async def prm(self, question, solution):
        return list(SCORES[solution][1])


def role(prompt: str) -> str:
    """Which agent a prompt is for; anything else is a reward-model judge."""
    if prompt.startswith("Solve the following"):
        return "solver"
    if prompt.startswith("Is the following problem easy or hard"):
        return "difficulty"
    if "review the current solution of a math problem and then fix it" in prompt:
        return "joint"
    if "give step-by-step feedback" in prompt:
        return "reviewer"
    return "refiner" if prompt.startswith("Your task is to fix the errors") else "judge"


def reviewed_solution(prompt: str) -> str:
    """The chain a Reviewer, Refiner or joint prompt shows, without its "(Score: n/10)" marks."""
    shown = prompt.split("Current solution:\n", 1)[1].split("\n\nTeacher feedback:", 1)[0]
    return re.sub(r" \(Score: \d+/10\)", "", shown)


class ScriptedServer(FakeOpenAIServer):
    """Replies by role (see the module docstring); `refine_to` maps the answer of the chain
    being rewritten to the rewrite; `calls_hard`: the llm-difficulty verdict by question
    keyword; judges (the ORM/PRM judge) rate every step and the solution 7/10."""

    refine_to = DEFAULT_REFINE
    calls_hard = {"easy": "I think this one is hard.", "hard": "Easy."}

    def _default_reply(self, path, body):
        prompt = body["messages"][-1]["content"]
        kind = role(prompt)
        keyword = next((k for k in QUESTIONS if f"{k} question" in prompt), "hard")
        if kind == "solver":
            text = QUESTIONS[keyword][body["seed"] % 4] if body.get("seed") is not None else HARD[0]
        elif kind == "difficulty":
            text = self.calls_hard.get(keyword, "no idea")
        elif kind == "reviewer":
            text = "feedback"
        elif kind == "judge":
            text = "Step 1: 7\nStep 2: 7\nStep 3: 7\nScore: 7"
        else:
            answer = re.search(r"\\boxed\{(\d+)\}", reviewed_solution(prompt)).group(1)
            rewrite = self.refine_to[answer]
            text = f"The step is wrong.\n{CORRECTED}\n{rewrite}" if kind == "joint" else rewrite
        return Reply(body=completion(text))

    def bodies(self, kind: str) -> list[dict]:
        """Chat requests of one role, in arrival order."""
        return [r.body for r in self.requests
                if isinstance(r.body, dict) and role(r.body["messages"][-1]["content"]) == kind]

    def prompts(self, kind: str, iteration: int | None = None) -> list[str]:
        """Prompts of one role (in iteration `iteration` only: seed // 10000 with seed 0)."""
        return [b["messages"][-1]["content"] for b in self.bodies(kind)
                if iteration is None or b["seed"] // 10_000 == iteration]


def run_loop(server, question, iterations, stats=RewardStats(1.0, 0.5), k=4, **config):
    """MAgICoRE on one question: k Solver chains, then the loop with MagicoreConfig(**config)."""
    async def main():
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            agents, rms = Agents(executor, FORMATS["gsm8k"], Sampling(seed=0)), RewardModels(TableRM(), TableRM())
            chains, ledgers = await solve(agents, rms, question, k)
            ledger = Ledger()
            for one in ledgers:
                ledger = ledger.merged(one)
            return await refine_until_easy(agents, rms, question, chains,
                                           MagicoreConfig(k=k, iterations=iterations, **config), stats, ledger)
    return asyncio.run(main())
