"""`python -m scoreflow.aflow` and `python -m scoreflow.adas` as real subprocesses: a bad setting
is one line, exit status 2, and no run directory; a search killed with SIGKILL mid-run and
rerun finishes without redoing anything it had finished (no optimiser reply asked again, no
workflow run executed twice, every finished record unchanged)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scripted_search import OPTIMIZER, SearchScript, adas_reply, aflow_reply
from scripted_workflows import BAD, GOOD

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(method: str, server, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", f"scoreflow.{method}", "--optimizer-url", server.base_url, "--optimizer-model",
            OPTIMIZER, "--executor-url", server.base_url, "--executor-model", "executor", "--out", str(out), *flags]


def test_bad_settings_are_one_line_and_write_nothing(tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with SearchScript([]) as alive:
        cases = {
            "aflow --rounds 0": (["aflow", "--rounds", "0"], "--rounds 0 is out of range"),
            "aflow --attempts 0": (["aflow", "--attempts", "0"], "--attempts 0 is out of range"),
            "aflow --optimizer-temperature nan": (["aflow", "--optimizer-temperature", "nan"],
                                                  "--optimizer-temperature nan"),
            "aflow --early-stop maybe": (["aflow", "--early-stop", "maybe"], "--early-stop"),
            "aflow: optimiser unreachable": (["aflow", "--executor-url", alive.base_url, "--optimizer-url", dead],
                                             f"--optimizer-url {dead} is unreachable"),
            "adas --debug-max 0": (["adas", "--debug-max", "0"], "--debug-max 0 is out of range"),
            "adas --runs -1": (["adas", "--runs", "-1"], "--runs -1 is out of range"),
            "adas --task gsm9k": (["adas", "--task", "gsm9k"], "gsm9k"),
            "adas: executor unreachable": (["adas", "--executor-url", dead], f"--executor-url {dead} is unreachable"),
        }

        def attempt(name):
            (method, *flags), _ = cases[name]
            return subprocess.run([sys.executable, "-m", f"scoreflow.{method}", *flags, "--out",
                                   str(tmp_path / name.replace(" ", "_"))], cwd=tmp_path, env=ENV,
                                  capture_output=True, text=True, timeout=120)

        with ThreadPoolExecutor(4) as pool:
            results = dict(zip(cases, pool.map(attempt, cases)))
    for name, (_, says) in cases.items():
        done = results[name]
        assert done.returncode == 2, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert not (tmp_path / name.replace(" ", "_")).exists(), name


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def snapshot(out: Path) -> dict[str, list[str]]:
    """Every JSON-lines record of the run, per file."""
    return {str(p.relative_to(out)): lines(p) for p in sorted(out.rglob("*.jsonl")) if "executor_cache" not in p.parts}


def kill_when(argv: list[str], marker: Path, count: int) -> None:
    """Start the command, SIGKILL it as soon as `marker` has `count` lines."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(lines(marker)) < count:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed at {marker.name}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_resumed(before: dict[str, list[str]], after: dict[str, list[str]], asked_again: int) -> None:
    """Finished records unchanged and none added twice; optimiser requests only for replies not logged yet."""
    for name, records in before.items():
        if name.endswith(("fitness.jsonl", "rounds.jsonl", "generations.jsonl", "initial.jsonl", "steps.jsonl")):
            assert after[name][: len(records)] == records, name
        if name.endswith("executions.jsonl"):
            assert set(records) <= set(after[name]), name
    for name, records in after.items():
        if name.endswith("executions.jsonl"):
            runs = [(json.loads(r)["workflow_id"], json.loads(r)["run"]) for r in records]
            assert len(runs) == len(set(runs)), name  # no run executed twice
    new_steps = sum(len(after[n]) - len(before.get(n, [])) for n in after if n.endswith("steps.jsonl"))
    assert asked_again == new_steps  # every reply logged before the kill was read back, not asked again


@pytest.mark.parametrize("method", ["aflow", "adas"])
def test_a_killed_search_resumes_without_redoing_finished_work(tmp_path, gsm8k_rows, method):
    out = tmp_path / method
    if method == "aflow":
        then, flags, marker, count = (lambda i: aflow_reply(GOOD if i == 0 else BAD, f"change {i}"),
                                      ["--limit", "2", "--runs", "2", "--rounds", "4", "--early-stop", "false"],
                                      out / "round_3" / "executions.jsonl", 1)  # mid-evaluation
    else:
        then, flags, marker, count = (lambda i: adas_reply(GOOD, f"design {i}"),
                                      ["--limit", "1", "--rounds", "3"], out / "gen_2" / "steps.jsonl", 2)  # reflecting
    with SearchScript(gsm8k_rows[:2], then=then, optimizer_delay_s=0.3, delay_s=0.05) as server:
        kill_when(command(method, server, out, *flags), marker, count)
        before, asked = snapshot(out), len(server.optimizer_requests())
        again = subprocess.run(command(method, server, out, *flags), env=ENV, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert_resumed(before, snapshot(out), len(server.optimizer_requests()) - asked)
    assert again.stderr.splitlines()[0] == f"scoreflow.{method}: settings: paper defaults"
    if method == "aflow":
        assert [json.loads(r)["round"] for r in lines(out / "rounds.jsonl")] == [1, 2, 3, 4, 5]
    else:
        assert [json.loads(r)["generation"] for r in lines(out / "generations.jsonl")] == [1, 2, 3]
    assert (out / "best_workflow.py").read_text() == GOOD
