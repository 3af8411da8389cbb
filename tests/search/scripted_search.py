"""What the search tests share (not collected): the loopback server they talk to, the optimiser
LLM and the executor in one (scoreflow.testing's FakeOpenAIServer), told apart by the requested
model name, and the optimiser replies it is scripted with."""

import json
import threading
import time

from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scripted_workflows import gold_in

OPTIMIZER = "optimizer"  # the model name the tests give the optimiser; anything else is the executor


def aflow_reply(code: str, modification: str) -> str:
    return f"One change.\n<modification>{modification}</modification>\n<graph>\n{code}</graph>"


def adas_reply(code: str, name: str) -> str:
    return f"<reflection>fine</reflection>\n<thought>an idea</thought>\n<name>{name}</name>\n<graph>\n{code}</graph>"


class SearchScript(FakeOpenAIServer):
    """Optimiser: the scripted `replies` in order (a text, or a Reply sent as it is), then `then(i)`
    for its i-th request (from 0), each after `optimizer_delay_s`. Executor: the gold answer of the
    question in the prompt when the prompt says GOOD, a wrong one otherwise. A 1-token request (the
    pre-flight check): "ok". `server` goes to FakeOpenAIServer (delay_s: every reply's latency)."""

    def __init__(self, rows, replies=(), then=None, optimizer_delay_s=0.0, **server):
        super().__init__(**server)
        self.rows, self.replies, self.then, self.optimizer_delay_s = rows, list(replies), then, optimizer_delay_s
        self.asked = 0
        self.turn = threading.Lock()

    def optimizer_requests(self) -> list[list[dict]]:
        """The messages of every optimiser request so far (not the pre-flight)."""
        return [r.body["messages"] for r in self.requests
                if isinstance(r.body, dict) and r.body.get("model") == OPTIMIZER and r.body.get("max_tokens") != 1]

    def executor_requests(self) -> int:
        return sum(1 for r in self.requests if isinstance(r.body, dict) and r.body.get("model") != OPTIMIZER
                   and r.body.get("max_tokens") != 1)

    def _default_reply(self, path, body):
        if body.get("max_tokens") == 1:
            return Reply(body=completion("ok"))
        if body["model"] == OPTIMIZER:
            time.sleep(self.optimizer_delay_s)
            with self.turn:
                text = self.replies.pop(0) if self.replies else self.then(self.asked)
                self.asked += 1
            return text if isinstance(text, Reply) else Reply(body=completion(text))
        text = json.dumps(body["messages"]).replace("\\n", "\n")
        return Reply(body=completion(f"\\boxed{{{gold_in(self.rows, text)}}}" if "GOOD" in text else "\\boxed{123456}"))

