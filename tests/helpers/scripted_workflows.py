"""Workflows a scripted generator writes (after the "<graph>\\n" prefix of the prompt): one the
scripted executor answers right, one it answers wrong, and one the validator refuses; and the
loopback server that plays both the generator and the executor with them."""

import json

from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion

GOOD = """class Workflow:
    def __init__(self, config, problem):
        self.problem = problem
        self.custom = operator.Custom(config)

    async def run_workflow(self):
        first = await self.custom(instruction="GOOD: solve it step by step")
        check = await self.custom(instruction="GOOD: check this answer: " + first["response"])
        return check["response"]
"""
BAD = GOOD.replace("GOOD", "BAD")
INVALID = "import os\nclass Workflow:\n    pass\n"


def gold_in(rows: list[dict], text: str) -> str:
    """The gold answer of the GSM8K row whose question appears in `text` ("7" if none does)."""
    return next((r["answer"] for r in rows if r["question"][:60] in text), "7")


def samples(body: dict, cycle: tuple[str, ...]) -> Reply:
    """A /v1/completions reply of body["n"] choices, cycling through `cycle`."""
    texts = [cycle[i % len(cycle)] for i in range(body.get("n", 1))]
    return Reply(body={"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                       "choices": [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


class ScoreFlowScript(FakeOpenAIServer):
    """Generator: n choices cycling GOOD, BAD, INVALID. Executor: the gold answer of the
    question in the prompt when the instruction says GOOD, a wrong one otherwise."""

    def __init__(self, rows: list[dict], **kw):
        super().__init__(**kw)
        self.rows = rows

    def _default_reply(self, path, body):
        if path == "/v1/completions":
            return samples(body, (GOOD, BAD, INVALID))
        text = json.dumps(body["messages"])
        gold = gold_in(self.rows, text.replace("\\n", "\n"))
        return Reply(body=completion(f"\\boxed{{{gold}}}" if "GOOD" in text else "\\boxed{123456}"))


CHEAP = """class Workflow:
    def __init__(self, config, problem):
        self.problem = problem
        self.custom = operator.Custom(config)

    async def run_workflow(self):
        answer = await self.custom(instruction="GOOD: give the final number only")
        return answer["response"]
"""  # right, as GOOD is, in one executor call instead of two


class CostScript(ScoreFlowScript):
    """Generator: n choices alternating CHEAP and GOOD, both right; GOOD costs twice CHEAP's
    executor tokens (two calls, each answered with the same usage)."""

    def _default_reply(self, path, body):
        if path == "/v1/completions":
            return samples(body, (CHEAP, GOOD))
        return super()._default_reply(path, body)
