"""Workflows a scripted generator writes (after the "<graph>\\n" prefix of the prompt): one the
scripted executor answers right, one it answers wrong, and one the validator refuses."""

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
