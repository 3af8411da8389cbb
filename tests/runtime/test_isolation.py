"""Workflows run isolated (issue #16): what a hostile workflow does ends as a status of its
own run, in time, with the calling process alive and nothing left running after it.

Every attack runs through run_workflow in a subprocess of the test (isolated_runs.py), so a
regression kills that process, not pytest, and the test fails instead. The loopback fake
server records when each executor request arrived; the subprocess reports when each run
returned (the same monotonic clock), and keeps its event loop running a while after.

Then: a fuzz of randomly assembled valid workflows through the same checks; the stages
(and so evaluation) and MAgICoRE recording a failed run or question and going on, without
retrying it on resume; and a worker template that dies being replaced."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.magicore import (FORMATS, Agents, MagicoreConfig, OutcomeRewardModel, ProcessRewardModel,
                                RewardModels, Runner, Sampling)
from scoreflow.magicore import MagicoreRunConfig
from scoreflow.magicore.reward import split_steps
from scoreflow.optimize import stages
from scoreflow.optimize.config import RunConfig
from scoreflow.rundir import JsonlLog
from scoreflow.tasks.base import AnswerTask, Question
from scoreflow.testing.scripted_server import FakeOpenAIServer, Request
from scoreflow.workflow.prompts import workflow_source
from scoreflow.workflow.runtime import STATUSES, run_workflow, validate_workflow
from workflow_fuzz import random_workflow

ISOLATED_RUNS = Path(__file__).resolve().parents[1] / "helpers" / "isolated_runs.py"
ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 5.0  # a run returns within its time limit + this


def run_isolated(server: FakeOpenAIServer, jobs: list[tuple[str, float]], concurrency: int,
                 linger_s: float = 1.0) -> list[dict]:
    """Run each (workflow code, time limit) on the math family in a subprocess, `concurrency`
    at a time; the results, each with "tag": the text its executor requests carry. Fails
    if the subprocess did not survive."""
    tags = [uuid.uuid4().hex for _ in jobs]
    request = {"base_url": server.base_url, "concurrency": concurrency, "linger_s": linger_s,
               "jobs": [{"code": code, "problem": f"Question {tag}: what is 1 + 1?", "family": "math",
                         "timeout_s": timeout_s} for (code, timeout_s), tag in zip(jobs, tags)]}
    budget = 60 + linger_s + sum(timeout_s + GRACE_S for _, timeout_s in jobs) / concurrency
    proc = subprocess.run([sys.executable, str(ISOLATED_RUNS)], input=json.dumps(request),
                          capture_output=True, text=True, timeout=budget, cwd=ROOT)
    assert proc.returncode == 0, f"the calling process died ({proc.returncode}): {proc.stderr[-2000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1] == {"done": True}
    results = sorted(lines[:-1], key=lambda r: r["index"])
    assert [r["index"] for r in results] == list(range(len(jobs)))
    for result, tag, (_, timeout_s) in zip(results, tags, jobs):
        result.update(tag=tag, timeout_s=timeout_s)
    return results


SEND_SLACK_S = 0.25


def carries(request: Request, tag: str) -> bool:
    """Whether an executor request is one of the tagged run's (its body may be the raw bytes of
    an upload the client cut off: a call cancelled while it was being sent)."""
    return tag in repr(request.body)


def check_contained(server: FakeOpenAIServer, results: list[dict]) -> None:
    """What every run must satisfy: a status, in time, and no executor call after it returned.
    The server stamps a request once its thread has read it, which on a loaded machine trails
    the client's send by milliseconds: a call cancelled on its way out as the run ended can be
    stamped just after the return, hence SEND_SLACK_S. A call made after the return (the
    attacks' next Programmer request comes a program run later) arrives well past it."""
    for result in results:
        assert result["status"] in STATUSES, result
        assert result["elapsed_s"] <= result["timeout_s"] + GRACE_S, result
        late = [r for r in server.requests
                if carries(r, result["tag"]) and r.arrived > result["returned"] + SEND_SLACK_S]
        assert not late, f"{len(late)} executor calls after the run returned: {result}"


def math(body: str, methods: str = "") -> str:
    code = workflow_source("math", body, methods)
    assert validate_workflow(code, "math") == []
    return code


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


# ----------------------------------------------------------------------------- one test per attack class

DEEP_TUPLE = "t = ()\nfor i in range(9):\n    for j in range(10000):\n        t = ((((((((((t,),),),),),),),),),)\n"
BIG_INT = "x = 10\nfor i in range(13):\n    x = x * x\n"  # 8193 digits: str() refuses (more than 4300)
SELF_ATTACKS = {"rebind self": "self = operator.Custom\nself.name = 'hacked'\nreturn 'x'",
                "class as self": "Workflow.rename(operator.Custom)\nreturn 'x'"}
RENAME = "def rename(self):\n    self.name = 'hacked'"
ATTACKS = {  # attack class -> ([workflow code], time limit in seconds: generous, as the runs share 2 busy cores)
    # hashing a tuple nested 900 000 deep overflows the C stack (tuple hashing has no recursion check)
    "crash": ([math(DEEP_TUPLE + "d = {t: 1}\nreturn 'x'")], 20.0),
    # one multiplication of this loop takes hours; the self-feeding map runs until memory is gone
    "block": ([math("x = 7\nfor i in range(40):\n    x = x * x\nreturn 'x'"),
               math("l = [0]\nany(map(l.append, l))\nreturn 'x'")], 1.0),
    "memory": ([math('s = "x" * 3000000000\nreturn s[:1]'),
                math('held = []\nwhile True:\n    held.append("y" * 10000000)')], 20.0),
    "raise": ([math('d = {}\nd["response"] = d\nreturn d'), math(BIG_INT + "return x"),
               math(BIG_INT + "raise ValueError(x)"), math(BIG_INT + "return [x]"),
               math("return ['a', ('b', {'answer': 3})]")], 20.0),
    # the two attacks are rejected; the last run shows the operator class unchanged
    "shared state": ([workflow_source("math", attack, RENAME) for attack in SELF_ATTACKS.values()]
                     + [math("return self.custom.name")], 20.0),
    # two Programmer calls (executor calls a second apart, a program run between) are in flight
    # in the parent when the workflow blocks its worker, which is killed at the deadline: the
    # calls' later executor requests must never be sent (3 s: on a loaded machine a worker can
    # take a second to send its first calls)
    "work after return": ([math('p = await asyncio.gather(self.programmer(analysis="a"), '
                                'self.programmer(analysis="b"), self.block())\nreturn p[0]',
                                "async def block(self):\n    x = 7\n    for i in range(40):\n        x = x * x")],
                          3.0),
}


@pytest.fixture(scope="module")
def attacks() -> tuple[dict[str, list[dict]], FakeOpenAIServer]:
    """Every attack, all at once, in one subprocess (one interpreter start for all: the
    import of the runtime is the slow part); executor replies take a second."""
    jobs = [(name, code, timeout_s) for name, (codes, timeout_s) in ATTACKS.items() for code in codes]
    with FakeOpenAIServer(delay_s=1.0) as server:
        results = run_isolated(server, [(code, t) for _, code, t in jobs], concurrency=len(jobs), linger_s=3.0)
    by_class: dict[str, list[dict]] = {name: [] for name in ATTACKS}
    for (name, _, _), result in zip(jobs, results):
        by_class[name].append(result)
    return by_class, server


def test_a_workflow_that_crashes_the_interpreter_is_an_error(attacks):
    results, server = attacks
    check_contained(server, results["crash"])
    assert [(r["status"], "SIGSEGV" in r["error"]) for r in results["crash"]] == [("error", True)]


def test_blocking_c_operations_end_at_the_deadline(attacks):
    results, server = attacks
    check_contained(server, results["block"])
    assert [r["status"] for r in results["block"]] == ["timeout", "timeout"]
    assert all(r["elapsed_s"] < r["timeout_s"] + 3 for r in results["block"])  # killed, not waited for


def test_memory_exhaustion_is_an_error_memory(attacks):
    results, server = attacks
    check_contained(server, results["memory"])
    assert all(r["status"] == "error" and r["error"].startswith("memory") for r in results["memory"])


def test_what_a_workflow_returns_or_raises_cannot_make_run_workflow_raise(attacks):
    results, server = attacks
    check_contained(server, results["raise"])
    assert [r["status"] for r in results["raise"]] == ["error"] * 4 + ["ok"]
    assert "RecursionError" in results["raise"][0]["error"] and "4300" in results["raise"][1]["error"]
    assert results["raise"][2]["error"] == "ValueError (its message could not be shown)"


def test_runs_cannot_change_shared_state(attacks):
    results, server = attacks
    check_contained(server, results["shared state"])
    for attack in SELF_ATTACKS.values():
        problems = validate_workflow(workflow_source("math", attack, RENAME), "math")
        assert any("`self` may only" in p or "may only be called" in p for p in problems), problems
    assert [r["status"] for r in results["shared state"]] == ["invalid", "invalid", "ok"]
    assert results["shared state"][2]["raw"] == "Custom"


def test_no_executor_call_starts_after_a_run_returns(attacks):
    results, server = attacks
    check_contained(server, results["work after return"])
    (result,) = results["work after return"]
    assert result["status"] == "timeout"
    assert sum(carries(r, result["tag"]) for r in server.requests) >= 2  # calls were under way


# ----------------------------------------------------------------------------- the worker template

def worker_templates() -> list[int]:
    """Pids of this process's worker templates (children running scoreflow.workflow.worker)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == os.getpid() and b"scoreflow.workflow.worker" in cmdline:
            found.append(int(entry))
    return found


def test_an_operator_call_never_awaited_leaves_the_callers_stderr_clean(server):
    """Python's own reports about a workflow's objects (a RuntimeWarning for a coroutine never
    awaited, an "Exception ignored" when it is finalised where the restricted builtins have no
    __import__) would reach the stderr the worker shares with the calling process."""
    code = workflow_source("math", 'pending = self.custom(instruction="never awaited")\nreturn "42"')
    request = {"base_url": server.base_url, "concurrency": 1, "linger_s": 0.5,
               "jobs": [{"code": code, "problem": "What is 6 * 7?", "family": "math", "timeout_s": 10.0}]}
    proc = subprocess.run([sys.executable, str(ISOLATED_RUNS)], input=json.dumps(request),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0])["status"] == "ok", proc.stderr
    assert "never awaited" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_a_dead_worker_template_ends_its_runs_and_is_replaced(server):
    """As if the OOM killer took the template: the run under way ends at once with an error,
    and the next run starts a new template."""
    blocked = math("x = 7\nfor i in range(40):\n    x = x * x\nreturn 'x'")

    async def main():
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            await run_workflow(math("return 'warm'"), "q", executor, "math", 20.0)
            (template,) = worker_templates()
            run = asyncio.create_task(run_workflow(blocked, "q", executor, "math", 20.0))
            await asyncio.sleep(1.0)
            os.kill(template, signal.SIGKILL)
            start = time.monotonic()
            died, after = await run, await run_workflow(math("return 'again'"), "q", executor, "math", 20.0)
            return died, time.monotonic() - start, after, template

    died, seconds, after, template = asyncio.run(main())
    assert died.status == "error" and "did not report" in died.error and seconds < 5
    (replacement,) = worker_templates()
    assert after.status == "ok" and replacement != template


# ----------------------------------------------------------------------------- fuzz

FUZZ_RUNS = 120


def test_random_valid_workflows_all_end_with_a_status_in_time():
    rng = random.Random(16)
    codes = [random_workflow(rng) for _ in range(FUZZ_RUNS)]
    assert all(validate_workflow(code, "math") == [] for code in codes)
    with FakeOpenAIServer() as server:
        results = run_isolated(server, [(code, 3.0) for code in codes], concurrency=8)
    check_contained(server, results)
    statuses = {r["status"] for r in results}
    assert {"ok", "error", "empty"} <= statuses, statuses  # the mix covers the outcomes


# ----------------------------------------------------------------------------- stages survive anything

def exploding_check(gold: str, answer: str) -> float:
    """A scorer that fails on one answer, as a bug or an unforeseen input would."""
    if "boom" in answer:
        raise ValueError("the scorer cannot read this answer")
    return float(gold in answer)


QUESTIONS = [Question("q1", "What is 1 + 1?", "2", {}), Question("q2", "What is 2 + 2?", "4", {})]


def execute(tmp_path: Path, workflows: list[dict], server: FakeOpenAIServer) -> list[dict]:
    it = stages.Iteration(0, tmp_path, RunConfig(runs=1), AnswerTask("exploding", "math", QUESTIONS, exploding_check))

    async def main() -> list[dict]:
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            return await stages.execute(it, workflows, executor)

    return asyncio.run(main())


def boxed(answer: str) -> str:
    return math(f'return "\\\\boxed{{{answer}}}"')


def test_execute_records_any_failed_run_and_does_not_retry_it(tmp_path, server):
    workflows = [{"id": "scorer-fails", "question_id": "q1", "valid": True, "code": boxed("boom")},
                 {"id": "raises", "question_id": "q1", "valid": True, "code": math("raise KeyError('x')")},
                 {"id": "right", "question_id": "q2", "valid": True, "code": boxed("4")}]
    records = {r["workflow_id"]: r for r in execute(tmp_path, workflows, server)}
    assert [(records[w["id"]]["status"], records[w["id"]]["score"]) for w in workflows] == [
        ("error", 0.0), ("error", 0.0), ("ok", 1.0)]
    assert records["scorer-fails"]["error"] == "the run failed: ValueError: the scorer cannot read this answer"
    assert execute(tmp_path, workflows, server) == list(records.values())  # resumed: nothing rerun, nothing added


def test_a_run_the_process_died_in_twice_is_recorded_not_started_again(tmp_path, server):
    attempts = JsonlLog(tmp_path / "attempts.jsonl")
    attempts.append([{"workflow_id": "killer", "run": 0, "event": "start"}] * 2  # two deaths during it
                    + [{"workflow_id": "interrupted", "run": 0, "event": e} for e in ("start", "stop")] * 2)
    workflows = [{"id": "killer", "question_id": "q2", "valid": True, "code": template_math()},
                 {"id": "interrupted", "question_id": "q2", "valid": True, "code": template_math()}]
    records = {r["workflow_id"]: r for r in execute(tmp_path, workflows, server)}
    assert records["killer"]["status"] == "error" and "died during this run 2 times" in records["killer"]["error"]
    assert records["interrupted"]["status"] == "ok"  # orderly stops (Ctrl-C) are not deaths
    assert server.request_count == 2  # the interrupted run's Custom and extraction calls only


def template_math() -> str:
    return math('r = await self.custom(instruction="Solve it.")\nreturn r["response"]')


class CrashingRewardModel(OutcomeRewardModel, ProcessRewardModel):
    """Scores every chain 0.9, but fails on the question that mentions a crash."""

    async def orm(self, question, solutions):
        if "crash" in question:
            raise KeyError("a bug in the reward model")
        return [0.9] * len(solutions)

    async def prm(self, question, solution):
        return [0.9] * len(split_steps(solution))


def test_magicore_records_a_crashed_question_and_goes_on_without_it(tmp_path, server):
    questions = [Question("fine", "What is 2 + 3?", "5", {}), Question("crash", "Please crash.", "1", {})]
    task = AnswerTask("magicore-gsm8k", "math", questions, lambda gold, answer: float(gold == answer))
    config = MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=2, iterations=1), Sampling(seed=0), self_refine_rounds=1)

    async def main():
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            rms = RewardModels(CrashingRewardModel(), CrashingRewardModel())
            runner = Runner(task, questions, Agents(executor, FORMATS["gsm8k"], config.sampling), rms, config,
                            tmp_path, log=lambda line: None)
            return await runner.run()

    summary = asyncio.run(main())
    assert (summary["questions"], summary["errors"]) == (1, 1)
    (error,) = map(json.loads, (tmp_path / "errors.jsonl").read_text().splitlines())
    assert (error["id"], error["phase"], error["crashed"]) == ("crash", "solve", True)
    sent = server.request_count
    assert asyncio.run(main()) == summary and server.request_count == sent  # not retried
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == 1
