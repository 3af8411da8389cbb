"""Attacks on the program sandbox from its red-team report (issue #27), each checked by its
real effect: a score, a fact the parent believes, an IPC object the host or another run can
see, the memory that concurrent runs may hold. Each of these tests fails on the sandbox as
it was before the fixes (a clean exit counted as a pass, the report file was writable, ...).

Where the audit hook is not what stops an attack, the test runs with and without it: the
OS isolation alone must hold."""

import asyncio
import random
import subprocess
import threading
import uuid
import warnings

import pytest

from scoreflow.sandbox import MemoryBudget, run_python, run_python_async
from scoreflow.sandbox.budget import ENV_VAR, default_total_mb
from scoreflow.tasks import load_task
from scoreflow.workflow.host import OPERATORS
from test_operators import humaneval, operate, prompt_of, reply, server  # noqa: F401 (fixtures)
from test_sandbox import audit_hook, os_isolated, working_dirs  # noqa: F401 (fixtures)

ROWS = 20  # per benchmark


def reference(task, question) -> str:
    row = question.row
    return row["prompt"] + row["canonical_solution"] if task.name == "humaneval" else row["code"]


# ----------------------------------------------------------------------------- 1. a pass is proven

FORGE = """
import os, sys
print("passed")
print("ok 4f2a9c1e8b7d6a5f4e3d2c1b0a998877")
for fd in range(3, 64):  # the report pipe is among them: claim a pass there too
    try:
        os.write(fd, b"=4f2a9c1e8b7d6a5f4e3d2c1b0a998877")
    except OSError:
        pass
os._exit(0)
"""
CALL_TIME_EXIT = """
import sys
def {entry}(*args, **kwargs):
    sys.exit(0)
"""
EARLY_ENDS = {  # appended to a correct answer: each ends the program before the tests could fail it
    "sys.exit(0) at import": "import sys\nsys.exit(0)",
    "os._exit(0) at import": "import os\nos._exit(0)",
    "raise SystemExit": "raise SystemExit",
    "a BaseException subclass": "class Stop(BaseException):\n    pass\nraise Stop()",
    "sys.exit(0) inside the function": CALL_TIME_EXIT,
    "forged pass on stdout and every fd": FORGE,
}


def test_early_ends_score_zero_and_correct_answers_one_on_real_rows():
    """On 20 HumanEval and 20 MBPP rows: the reference answer scores 1; the same answer
    followed by any early end scores 0, so it is the end, not the answer, that fails."""
    tasks = [load_task("humaneval", "test"), load_task("mbpp", "validate")]
    jobs = [(task, q, reference(task, q), None) for task in tasks for q in task.questions[:ROWS]]
    jobs += [(task, q, f"{answer}\n\n{end.format(entry=q.row['entry_point'])}", name)
             for task, q, answer, _ in list(jobs) for name, end in EARLY_ENDS.items()]

    async def main():
        return await asyncio.gather(*(task.ascore(q, answer) for task, q, answer, _ in jobs))

    scores = asyncio.run(main())
    wrong = [(task.name, q.id, variant or "reference", score) for (task, q, _, variant), score in zip(jobs, scores)
             if score != (1.0 if variant is None else 0.0)]
    assert wrong == []


def test_the_test_operator_does_not_take_an_exit_for_a_pass(server, humaneval):  # noqa: F811
    task, question = humaneval
    correct = question.prompt + question.row["canonical_solution"]
    server.script(reply(f"Do not exit.\n```python\n{correct}\n```"))
    exiting = "import sys\nsys.exit(0)\n\ndef can_arrange(arr):\n    return -1"
    result, ctx = operate(server, "code", lambda config: OPERATORS["Test"](config)(solution=exiting),
                          problem=question.prompt, task=task, question=question)
    assert result == {"result": True, "solution": correct.strip()}
    assert "SystemExit" in prompt_of(server) and ctx.trace[0].sandbox_runs == 2


NONCE_HUNT = """
import os, re, signal, sys

NONCE = re.compile(rb"(?<![0-9a-f])(?=[0-9a-f]{0,31}[a-f])(?=[0-9a-f]{0,31}[0-9])[0-9a-f]{32}(?![0-9a-f])")

def hunt(frame):
    '''Every nonce-like string (hex, letters and digits) in the locals and globals of the
    frames up the stack.'''
    found = set()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for value in list(scope.values()):
                for text in (value, *(value if isinstance(value, (list, tuple)) else ())):
                    if isinstance(text, (str, bytes)):
                        found.update(NONCE.findall(text if isinstance(text, bytes) else text.encode()))
        frame = frame.f_back
    return found

def claim(found):
    for nonce in found:
        for fd in range(3, 64):
            try:
                os.write(fd, b"=" + nonce)
            except OSError:
                pass
    if found:
        os._exit(0)

def on_alarm(signum, frame, busy=[]):
    if not busy:  # not inside itself
        busy.append(frame)
        claim(hunt(frame))
        busy.pop()

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
claim(hunt(sys._getframe()))

def candidate(x):
    claim(hunt(sys._getframe()))
    return x
"""


def test_the_nonce_is_on_no_frame_the_program_can_walk(audit_hook):
    """The program and the function under test walk every frame up the stack (and a signal
    handler every millisecond does), write whatever looks like a nonce to every fd and exit 0:
    the checks, which fail, must still fail, and by their own assert (nothing was found)."""
    checks = "import time\nfor _ in range(200):\n    time.sleep(0.001)\n    assert candidate(1) == 1\nassert False"
    result = run_python(NONCE_HUNT, checks=checks, audit_hook=audit_hook)
    assert result.status == "error" and result.returncode == 1 and "AssertionError" in result.stderr, result


# ----------------------------------------------------------------------------- 2. facts the program cannot forge

FORGE_FACTS = """
import json, os, sys
for fd in [*json.loads(sys.argv[1]).values(), *range(3, 64)]:
    if isinstance(fd, int) and not isinstance(fd, bool):
        try:
            os.lseek(fd, 0, 0)
        except OSError:
            pass
        try:
            os.write(fd, b'{"isolated": false, "note": "FORGED by the program"}\\n')
        except OSError:
            pass
"""


def test_a_program_cannot_forge_the_set_up_facts(audit_hook, os_isolated):  # noqa: F811
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [run_python(FORGE_FACTS, audit_hook=audit_hook),
                   run_python(FORGE_FACTS + "def solve():\n    return 1", call="solve()", audit_hook=audit_hook)]
    assert [r.isolated for r in results] == [os_isolated] * 2
    assert not any("FORGED" in str(w.message) for w in caught)
    assert results[0].status == "ok", results[0]  # the writes themselves went through


# ----------------------------------------------------------------------------- 3. the audit hook stays on

SWITCH_OFF_HOOK = """
import ctypes, gc, sys

def solve():
    refused = []
    try:  # the red team's way: the child's globals through the garbage collector
        for o in gc.get_objects():
            if isinstance(o, dict) and "_FORBIDDEN_EVENTS" in o:
                o["_FORBIDDEN_EVENTS"] = frozenset()
    except PermissionError:
        refused.append("gc")
    frame = sys._getframe()
    while frame is not None:  # the same globals through the frames
        if "_FORBIDDEN_EVENTS" in frame.f_globals:
            frame.f_globals["_FORBIDDEN_EVENTS"] = frozenset()
        frame = frame.f_back
    try:
        ctypes.CDLL(None).getpid()
    except PermissionError:
        refused.append("ctypes")
    return refused
"""


def test_the_audit_hook_cannot_be_switched_off_from_inside():
    result = run_python(SWITCH_OFF_HOOK, call="solve()")
    assert (result.status, result.value) == ("ok", "['gc', 'ctypes']"), result.stderr


# ----------------------------------------------------------------------------- 4. IPC objects stay in their run

IPC_CREATE = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT = 0o1000
print(libc.shmget({key}, 16 << 20, IPC_CREAT | 0o666), libc.shmget({key} + 1, 16 << 20, IPC_CREAT | 0o666),
      libc.msgget({key}, IPC_CREAT | 0o666), flush=True)
os.mkdir({token!r})
os.chdir({token!r})  # tells the test this run is under way
time.sleep({hold_s})
"""
IPC_LOOK = """
import ctypes
libc = ctypes.CDLL(None)
print(libc.shmget({key}, 0, 0), libc.shmget({key} + 1, 0, 0), libc.msgget({key}, 0))
"""


@pytest.fixture
def ipc_key():
    key = random.randrange(1 << 20, 1 << 30)
    yield key
    for flag, k in (("-M", key), ("-M", key + 1), ("-Q", key)):  # what a failing run left on the host
        subprocess.run(["ipcrm", flag, str(k)], capture_output=True)


def host_ipc_keys() -> set[int]:
    keys = set()
    for kind in ("shm", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            keys.update(int(line.split()[0]) for line in f.readlines()[1:])
    return keys


def test_ipc_objects_end_with_their_run(audit_hook, ipc_key):
    token = uuid.uuid4().hex
    made = run_python(IPC_CREATE.format(key=ipc_key, token=token, hold_s=0), audit_hook=audit_hook)
    if not audit_hook:  # control: they were really made (with the hook, ctypes is refused)
        assert made.status == "ok" and all(int(i) >= 0 for i in made.stdout.split()), made
    assert not {ipc_key, ipc_key + 1} & host_ipc_keys()
    later = run_python(IPC_LOOK.format(key=ipc_key), audit_hook=False)
    assert later.stdout.split() == ["-1", "-1", "-1"], later


def test_a_run_cannot_see_the_ipc_objects_of_a_run_under_way(ipc_key):
    token = uuid.uuid4().hex

    async def main():
        holder = asyncio.create_task(run_python_async(IPC_CREATE.format(key=ipc_key, token=token, hold_s=30),
                                                      timeout_s=40, audit_hook=False))
        while not any(cwd.endswith(token) for cwd in working_dirs().values()):
            assert not holder.done(), holder.result()
            await asyncio.sleep(0.02)
        looker = await run_python_async(IPC_LOOK.format(key=ipc_key), audit_hook=False)
        holder.cancel()
        return looker

    looker = asyncio.run(main())
    assert looker.stdout.split() == ["-1", "-1", "-1"], looker


LEAK_CHECK = """

import os, sys

def _leaked(marker):
    seen = [" ".join(sys.argv), *os.environ.values(), sys.stdin.read()]
    for folder, _, files in os.walk("."):
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    seen.append(f.read(1 << 20).decode("utf-8", "replace"))
            except OSError:
                pass
    return any(marker in text for text in seen)

print("leaked" if _leaked("kcehc fed"[::-1] + "(candidate)") else "not found")
"""


def test_the_hidden_tests_are_in_no_file_argv_or_environment(audit_hook):
    """A HumanEval answer looks for its hidden tests' `def check(candidate)` in its argv,
    environment, stdin and work dir, as it could at scoring time, then passes them."""
    task = load_task("humaneval", "test")
    q = task.questions[0]
    result = run_python(task.program(q, reference(task, q) + LEAK_CHECK), checks=task.checks(q),
                        audit_hook=audit_hook, timeout_s=30)
    assert (result.status, result.stdout) == ("ok", "not found\n"), result


# ----------------------------------------------------------------------------- 7. one memory budget for all runs

def test_concurrent_runs_hold_no_more_than_the_memory_budget():
    """50 runs declaring 450 MB each, from two event loops in two threads, under a budget of
    1350 MB: each reports when its program started and ended, and at no moment were more
    than 3 of them running."""
    budget = MemoryBudget(1350)
    code = "import time\nstart = time.time()\ntime.sleep(0.2)\nprint(start, time.time())"
    spans: list[tuple[float, float]] = []

    def loop():
        async def main():
            return await asyncio.gather(*(run_python_async(code, memory_mb=450, budget=budget) for _ in range(25)))

        spans.extend(tuple(map(float, r.stdout.split())) for r in asyncio.run(main()))

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = [sum(step for _, step in events[:i + 1]) for i in range(len(events))]
    assert len(spans) == 50 and 2 <= max(running) <= 3


def test_a_run_larger_than_the_budget_runs_alone():
    budget = MemoryBudget(1000)
    order = []

    async def run(name, memory_mb, hold_s):
        async with budget.share(memory_mb):
            order.append(f"{name} starts")
            await asyncio.sleep(hold_s)
            order.append(f"{name} ends")

    async def main():
        small = asyncio.create_task(run("small", 400, 0.05))
        await asyncio.sleep(0.01)
        await asyncio.gather(run("huge", 5000, 0.05), run("after", 400, 0))  # the later small one waits its turn

    asyncio.run(asyncio.wait_for(main(), 5))
    assert order == ["small starts", "small ends", "huge starts", "huge ends", "after starts", "after ends"]


def test_a_cancelled_wait_gives_its_share_back():
    budget = MemoryBudget(1000)

    async def main():
        async with budget.share(1000):
            waiter = asyncio.create_task(budget.share(600).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
        async with budget.share(1000):  # all of it is free again
            return True

    assert asyncio.run(asyncio.wait_for(main(), 5))


def test_the_default_budget_is_half_the_physical_memory(monkeypatch):
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert abs(default_total_mb() - total_kb / 1024 / 2) < 0.05 * total_kb / 1024
    monkeypatch.setenv(ENV_VAR, "3000")
    assert default_total_mb() == 3000
