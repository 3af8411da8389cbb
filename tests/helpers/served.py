"""What the tests of our OpenAI-compatible server share: the model name, a question, and a
way to wait until the engine has nothing left to do. (The engine, server and client
fixtures are in conftest.py.)"""

import time

from scoreflow.engine import Engine

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def wait_idle(engine: Engine, timeout_s: float = 10.0) -> bool:
    """True once the engine holds no running rows and no queued requests."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not engine._running and not engine._waiting and engine._inbox.empty():
            return True
        time.sleep(0.02)
    return False
