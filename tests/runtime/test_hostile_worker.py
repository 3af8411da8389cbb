"""What a hostile workflow can make the host process do through its worker (issue #27):
nothing it does may outlive its run, make the host do unbounded work, or reach the host's
stderr.

Each attack runs through run_workflow in a host process of its own: this file, run as a
script (see `host`), so a regression takes that process down, not pytest. The host reports
each run with its trace, its own peak RSS growth and CPU time over the attack (after a
warm-up run started the worker template); the test reads what the host (and so the worker
template, which shares its fd 2) wrote to stderr. The executor is the loopback fake server,
with 64 requests allowed in flight, so the server sees every call the host makes at once.

The host checks again each bound that the worker's gateway keeps: a scripted worker breaks
them. SysV IPC cannot be reached from the restricted runtime (no imports), so that attack
runs at the worker's OS level: in children forked and confined exactly as the worker's are
(worker._seal, worker._confine), without the restricted runtime's defences.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.testing.scripted_server import FakeOpenAIServer
from scoreflow.workflow.context import WorkflowConfig
from scoreflow.workflow.host import OperatorHost
from scoreflow.workflow.isolation import _Run
from scoreflow.workflow.prompts import template_workflow, workflow_source
from scoreflow.workflow.run_context import MAX_OPERATOR_CALLS, RunContext
from scoreflow.workflow.runtime import run_workflow, validate_workflow
from scoreflow.workflow.wire import HEADER, frame, read_message

ROOT = Path(__file__).resolve().parents[2]
QUIET_STDERR_BYTES = 10_000
HOST_RSS_GROWTH_MB = 100
HOST_CPU_S = 2.0


def math(body: str, methods: str = "", prelude: str = "") -> str:
    code = prelude + workflow_source("math", body, methods)
    assert validate_workflow(code, "math") == []
    return code


def attack(code: str, delay_s: float = 0.0, timeout_s: float = 20.0) -> tuple[dict, FakeOpenAIServer, int]:
    """Run `code` in a host process of its own: (its report, the server, bytes it wrote to stderr)."""
    with FakeOpenAIServer(delay_s=delay_s) as server, tempfile.TemporaryFile() as stderr:
        request = {"base_url": server.base_url, "code": code, "timeout_s": timeout_s}
        proc = subprocess.run([sys.executable, __file__], input=json.dumps(request), stdout=subprocess.PIPE,
                              stderr=stderr, text=True, timeout=120 + timeout_s, cwd=ROOT)
        written = stderr.seek(0, os.SEEK_END)
        stderr.seek(max(0, written - 300))
        tail = stderr.read()  # shown escaped: it may hold the workflow's bytes
    assert proc.returncode == 0, f"the host process died ({proc.returncode}); its stderr ends {ascii(tail)}"
    return json.loads(proc.stdout), server, written


# ----------------------------------------------------------------------------- the worker's stderr

# A fake future whose cancel() raises: scoreflow's gather stops at it, leaving the task of
# boom() unawaited, so asyncio logs its exception (10 MB, newlines and ANSI escapes
# included) as "never retrieved" in the worker.
FAKE_FUTURE = '''class Fake:
    _asyncio_future_blocking = False

    def cancel(self, msg=None):
        raise ValueError("cancel refused")

    def get_loop(self):
        raise ValueError("no loop")


'''
LOG_FLOOD = math('try:\n    await asyncio.gather(Fake(), self.boom())\nexcept ValueError as e:\n    print(e)\n'
                 'return "x"', 'async def boom(self):\n    raise ValueError("\\x1b[2J\\nboom" + "b" * 10000000)',
                 FAKE_FUTURE)


def test_what_asyncio_logs_in_the_worker_never_reaches_the_hosts_stderr():
    report, _, written = attack(LOG_FLOOD)
    (result,) = report["results"]
    assert result["status"] == "ok" and result["printed"] == "cancel refused\n", result
    assert written < QUIET_STDERR_BYTES


def test_a_10000_call_gather_leaves_the_hosts_stderr_quiet():
    """The host used to write replies to the worker after it was gone: asyncio's own warning
    ("socket.send() raised exception.") for each."""
    report, _, written = attack(math('rs = await asyncio.gather(*[self.custom(instruction="g" + str(i)) '
                                     'for i in range(10000)])\nreturn "x"'))
    (result,) = report["results"]
    assert result["status"] == "error" and f"more than {MAX_OPERATOR_CALLS} operator calls" in result["error"]
    assert written < QUIET_STDERR_BYTES


# ----------------------------------------------------------------------------- the host's work

def test_requests_are_measured_in_bytes_so_huge_element_counts_cost_the_host_little():
    """2 million empty strings were 0 characters of arguments, so the host decoded, joined and
    traced them, for every call the workflow then abandoned (the red team's workflow took the
    host from 38 to 1,011 MB and 10 s of CPU). Then requests just under the limit, abandoned
    four at a time, until the run's requests pass 16 MiB."""
    code = math('''huge = [""] * 2000000
for i in range(10):
    try:
        await asyncio.gather(self.custom(instruction=huge), self.custom(instruction=huge), self.fail())
    except ValueError as e:
        if i == 0:
            print(e)
large = [""] * 200000
for i in range(8):
    try:
        await asyncio.gather(*[self.custom(instruction=large) for j in range(4)], self.fail())
    except ValueError as e:
        pass
return "x"''', 'async def fail(self):\n    raise ValueError("abandon")')
    report, _, _ = attack(code, delay_s=0.5, timeout_s=60.0)
    assert report["rss_growth_mb"] < HOST_RSS_GROWTH_MB and report["cpu_s"] < HOST_CPU_S, \
        {k: report[k] for k in ("rss_growth_mb", "cpu_s")}
    (result,) = report["results"]
    assert "bytes encoded; the limit is 1048576" in result["printed"], result
    assert result["status"] == "error" and "MiB of operator requests" in result["error"], result


def test_calls_a_workflow_abandons_are_cancelled_in_the_host():
    """A gather whose sibling raised gives up its calls: the host used to run them to the end."""
    code = math('''for i in range(3):
    try:
        await asyncio.gather(*[self.custom(instruction="abandoned " + str(j)) for j in range(8)], self.fail())
    except ValueError as e:
        pass
r = await self.custom(instruction="kept")
return r["response"]''', 'async def fail(self):\n    raise ValueError("abandon")')
    report, _, _ = attack(code, delay_s=1.0)
    (result,) = report["results"]
    assert result["status"] == "ok", result
    abandoned = [call for call in result["trace"] if call["instruction"].startswith("abandoned")]
    assert not any(call["finished"] for call in abandoned)
    assert [call["instruction"] for call in result["trace"] if call["finished"]] == ["kept", ""]  # and Extract


def test_at_most_16_operator_calls_of_a_run_are_in_flight_in_the_host():
    report, server, _ = attack(math('rs = await asyncio.gather(*[self.custom(instruction="wide " + str(i)) '
                                    'for i in range(40)])\nreturn rs[39]["response"]'), delay_s=0.5)
    (result,) = report["results"]
    assert result["status"] == "ok" and sum(call["finished"] for call in result["trace"]) == 40 + 1, result  # Extract
    assert server.max_in_flight == 16


# ----------------------------------------------------------------------------- a subverted worker

def call(call_id: int, instruction: str = "x") -> bytes:
    return frame({"id": call_id, "call": {"op": "Custom", "problem": None, "args": [],
                                          "kwargs": {"instruction": instruction}}})


def cancel(call_id: int) -> bytes:
    return frame({"cancel": call_id})


# What a worker whose gateway was bypassed (by a bug that let workflow code out of the
# restricted runtime) sends after its job -> the violation the host names. Each message of the
# last one is under the size limit of one message: together they pass the run's.
SUBVERSIONS = {
    "a huge message": (HEADER.pack(2 << 20), "a message of 2097152 bytes"),
    "ids out of order": (call(5), "ids count up from 0"),
    "17 calls in flight": (b"".join(call(i) for i in range(17)), "more than 16 operator calls in flight"),
    "67 requests": (b"".join(call(i) + cancel(i) for i in range(67)), "more than 66 operator requests"),
    "18 MB of requests": (b"".join(call(i, "y" * 1_000_000) + cancel(i) for i in range(18)), "bytes; the limit is"),
}


@pytest.mark.parametrize("frames, violation", SUBVERSIONS.values(), ids=SUBVERSIONS)
def test_the_host_ends_a_worker_that_passes_the_bounds_its_gateway_keeps(frames, violation):
    """The host's serving loop (isolation._Run), fed by a scripted worker, stops at once and
    names the breach (the run's error: "the workflow process broke the protocol: ...")."""

    async def worker(sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        await read_message(reader, 1 << 20)  # the job
        writer.write(frames)
        try:
            while await reader.read(1 << 16):  # until the host hangs up
                pass
        except ConnectionError:
            pass
        writer.close()

    async def main(server: FakeOpenAIServer) -> tuple[str | None, float]:
        async with ExecutorClient(server.base_url, "fake", api_key="k", max_concurrency=64) as executor:
            start = time.monotonic()
            ctx = RunContext(executor, "q", "math", deadline=start + 3.0)
            run = _Run(OperatorHost(WorkflowConfig("math", "fake", ctx)), 3.0)
            ours, theirs = socket.socketpair()
            await asyncio.gather(run._talk(ours, {}, token=-1), worker(theirs))
            return run.violation, time.monotonic() - start

    with FakeOpenAIServer(delay_s=5.0) as server:
        seen, seconds = asyncio.run(main(server))
    assert seen is not None and violation in seen and seconds < 2.0


# ----------------------------------------------------------------------------- SysV IPC

IPC_PROBE = r'''
import ctypes, json, os, struct, sys
from scoreflow.workflow import worker

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
KEY, IPC_CREAT = int(sys.argv[1]), 0o1000


def visible():
    return [kind for kind, found in (("shm", libc.shmget(KEY, 0, 0)), ("msg", libc.msgget(KEY, 0))) if found != -1]


def leave_objects():
    """What a hostile run does: a shared memory segment and a message queue, with data."""
    shm, msg = libc.shmget(KEY, 4096, IPC_CREAT | 0o666), libc.msgget(KEY, IPC_CREAT | 0o666)
    if shm == -1 or msg == -1:
        return 1
    ctypes.memmove(libc.shmat(shm, None, 0), b"secret", 6)
    return 0 if libc.msgsnd(msg, ctypes.create_string_buffer(struct.pack("l", 1) + b"secret"), 6, 0) == 0 else 2


def seen_by_a_later_run():
    return len(visible())


def in_a_worker_child(action):
    """Run `action` in a child forked from here and confined as the worker's are; its exit status."""
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            worker._confine(zygote)
            os._exit(action())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


facts = worker._seal()
left, later = in_a_worker_child(leave_objects), in_a_worker_child(seen_by_a_later_run)
print(json.dumps({"facts": facts, "left": left, "later_run_sees": later, "zygote_sees": visible()}))
'''


def host_ipc_objects(key: int) -> list[tuple[str, int]]:
    """(kind, id) of the objects with `key` in this (the host's) IPC namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    found = (("shm", libc.shmget(key, 0, 0)), ("msg", libc.msgget(key, 0)))
    return [(kind, ident) for kind, ident in found if ident != -1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker enters namespaces only as root")
def test_sysv_ipc_objects_end_with_their_run_and_no_other_run_sees_them():
    key = random.randrange(1 << 20, 1 << 30)
    try:
        proc = subprocess.run([sys.executable, "-c", IPC_PROBE, str(key)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        probe = json.loads(proc.stdout)
        if not probe["facts"]["sealed"]:
            pytest.skip(f"no namespaces here: {probe['facts']['why']}")
        assert probe["left"] == 0  # the hostile run made them
        assert (probe["later_run_sees"], probe["zygote_sees"], host_ipc_objects(key)) == (0, [], [])
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        for kind, ident in host_ipc_objects(key):  # left in the host's namespace by a regression
            (libc.shmctl if kind == "shm" else libc.msgctl)(ident, 0, None)  # IPC_RMID


# ----------------------------------------------------------------------------- the host process

def host(request: dict) -> dict:
    """Run a warm-up workflow (which starts the worker template), then the attack: its result
    and trace, and this process's peak RSS growth (MB) and CPU time (s) over the attack."""

    async def main() -> dict:
        async with ExecutorClient(request["base_url"], "fake", api_key="k", max_concurrency=64,
                                  timeout=60.0) as executor:
            await run_workflow(template_workflow("math"), "What is 1 + 1?", executor, "math", 30.0)
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM counts from here
            rss, cpu = memory_mb("VmRSS"), cpu_s()
            result = await run_workflow(request["code"], "What is 1 + 1?", executor, "math", request["timeout_s"])
            return {"rss_growth_mb": memory_mb("VmHWM") - rss, "cpu_s": cpu_s() - cpu, "results": [{
                "status": result.status, "error": result.error, "printed": result.printed,
                "trace": [{"instruction": e.inputs.get("instruction", ""), "finished": e.output is not None}
                          for e in result.trace]}]}

    return asyncio.run(main())


def memory_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only: not the worker template
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    print(json.dumps(host(json.load(sys.stdin))))
