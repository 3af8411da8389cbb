"""The optimiser LLM of both searches (AFlow's optimizer, ADAS's meta agent): asked through the
executor client (any OpenAI-compatible chat endpoint), its reply read for the method's XML tags
and for the workflow between <graph> and </graph>, and that workflow checked before it may cost
an execution:

- validate_workflow, the runtime's own static rules (PAPERS.md §S1, §S3);
- the operator-call rule (a workflow must call an operator) and the paper's operator set (§S2);
- the dry run on a canned executor (optimize/dry_run.py, §S3's small test problem).

    optimizer = Optimizer(client, out / "round_3" / "steps.jsonl", task, ("modification",), 0.0, None)
    proposal = await optimizer.ask(messages)        # never raises for a bad reply
    proposal.valid, proposal.code, proposal.tags["modification"], proposal.problems

A reply that fails is a Proposal listing its problems; the method decides whether to ask again.
Every reply is appended to the round's steps.jsonl with its check before it is used, and a
resumed round gets the logged replies back in order instead of sending new requests: a kill
costs at most the request in flight. A request the endpoint refuses (HTTP 400, e.g. longer than
the model's context) or an empty reply is a failed reply like an invalid one; only a request
that cannot be answered at all (the endpoint down after the client's retries, a wrong key or
model name) stops the search, as a one-line error that names it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cli import UserError
from ..executor import BadRequestError, ExecutorClient, ExecutorError, MalformedReplyError
from ..optimize.dry_run import dry_run
from ..rundir import JsonlLog
from ..tasks import Task
from ..workflow.prompts import PAPER_OPERATORS
from ..workflow.runtime import extract_graph, validate_workflow
from ..workflow.validate import NO_OPERATOR_CALL, calls_an_operator, operators_built


@dataclass(frozen=True)
class Proposal:
    """One optimiser reply: its text, the contents of the tags asked for ("" when absent), the
    workflow code (None without a <graph> block) and what is wrong with it; `checked` is False
    for a reply whose workflow was not meant to run (an intermediate ADAS reflection)."""

    reply: str
    tags: dict[str, str]
    code: str | None
    problems: list[str]
    checked: bool

    @property
    def valid(self) -> bool:
        return self.checked and not self.problems


async def check(code: str | None, task: Task) -> list[str]:
    """What keeps `code` from being evaluated on `task`; [] when nothing does."""
    if code is None:
        return ["no <graph> block with code"]
    problems = validate_workflow(code, task.family)
    if not problems and not calls_an_operator(code):
        problems = [NO_OPERATOR_CALL]
    if not problems and (other := sorted(operators_built(code) - set(PAPER_OPERATORS[task.family]))):
        problems = [f"uses {', '.join(other)}; the search offers only {', '.join(PAPER_OPERATORS[task.family])}"]
    if problems:
        return problems
    error = await dry_run(code, task)
    return [error] if error else []


def read_tags(reply: str, names: tuple[str, ...]) -> dict[str, str]:
    """{name: the text between <name> and </name>, stripped; "" when the reply has none}."""
    found = {name: re.search(rf"<{name}>(.*?)</{name}>", reply, re.DOTALL) for name in names}
    return {name: m.group(1).strip() if m else "" for name, m in found.items()}


def continued(messages: list[dict[str, str]], proposal: Proposal, prompt: str) -> list[dict[str, str]]:
    """The conversation after `proposal`: its reply (left out when there was none) and `prompt`."""
    reply = [{"role": "assistant", "content": proposal.reply}] if proposal.reply else []
    return messages + reply + [{"role": "user", "content": prompt}]


class Optimizer:
    """The optimiser LLM for one round, its replies logged to `log` (resumable)."""

    def __init__(self, client: ExecutorClient, log: Path, task: Task, tags: tuple[str, ...], temperature: float,
                 max_tokens: int | None):
        self.client, self.task, self.tags = client, task, tags
        self.temperature, self.max_tokens = temperature, max_tokens
        self.log = JsonlLog(log)
        self.logged = self.log.read()
        self.asked = 0

    async def ask(self, messages: list[dict[str, str]], *, check_code: bool = True) -> Proposal:
        """The next reply to `messages`, its workflow checked when `check_code`: the logged one
        when this round already had it, else a new request, logged before it is returned."""
        self.asked += 1
        if self.asked <= len(self.logged):
            return Proposal(**self.logged[self.asked - 1])
        reply, refused = "", None
        try:
            reply = (await self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens)).text
        except (BadRequestError, MalformedReplyError) as e:  # e.g. too long for its context; an empty reply
            refused = f"the optimiser gave no usable reply ({' '.join(str(e).split())[:300]})"
        except ExecutorError as e:
            raise UserError(f"the optimiser LLM at {self.client.base_url} did not answer ({e}); fix it and rerun the "
                            "same command to resume") from None
        code = extract_graph(reply)
        problems = [refused] if refused else (await check(code, self.task) if check_code else [])
        proposal = Proposal(reply, read_tags(reply, self.tags), code, problems, check_code)
        self.log.append([asdict(proposal)])
        return proposal
