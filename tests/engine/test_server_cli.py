"""`python -m scoreflow.serve` as a user runs it: it answers on its port while the model loads,
prints the URL and one-liners once ready, stops cleanly on Ctrl-C or SIGTERM, also when started
in the background. (Its mistakes, one line and exit status 2 each, are cases of
tests/e2e/test_cli_errors.py.)"""

import signal
import subprocess
import sys

import httpx
import pytest

from served import ASK, MODEL

pytestmark = pytest.mark.slow
SERVE = [sys.executable, "-m", "scoreflow.serve"]


def test_starts_answers_while_loading_then_serves_and_stops_on_ctrl_c():
    proc = subprocess.Popen([*SERVE, "--port", "0", "--max-batch", "2", "--max-seq-len", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listening = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in listening, listening + proc.stderr.read()
        url = listening.split("listening on ")[1].split(";")[0]
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] in ("loading", "ok")
        ready = "".join(proc.stdout.readline() for _ in range(3))
        assert f"serving {MODEL!r} at {url}" in ready and f"curl {url}/chat/completions" in ready
        assert f"OpenAI(base_url='{url}'" in ready
        r = httpx.post(f"{url}/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0 and "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_cleanly_when_started_in_the_background(sig):
    """`python -m scoreflow.serve &` from a script starts with SIGINT ignored (POSIX, for
    background jobs): Ctrl-C's signal and SIGTERM must still stop it, exit status 0."""
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    proc = subprocess.Popen([*SERVE, "--port", "0", "--max-batch", "1", "--max-seq-len", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)
    try:
        assert "listening on" in proc.stdout.readline()
        assert "serving" in proc.stdout.readline()  # loaded
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0 and "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
