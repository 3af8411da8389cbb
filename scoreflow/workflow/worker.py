"""The workflow worker: a warm template process (the zygote) that forks one child per run.

    parent (isolation.py)                        zygote: python -m scoreflow.workflow.worker FD
    -----------------------------------------    ---------------------------------------------------
    starts the zygote once (own session,          imports and warms up the restricted runtime, then
      minimal environment)                          (as root) enters its own network, mount and IPC
                                                    namespaces and an empty read-only root
    per run: a socket pair, a status pipe and a   keeps SPARES children forked and warmed up ahead
      stderr pipe, spawn(token, fds) on the         spawn: hands the run's socket and stderr pipe to
      control socket -->                            a spare (forks one if none is ready), forks a
    job and operator replies on the socket          replacement; SIGKILL at the deadline
    kill(token) when the run is over                (+ KILL_GRACE_S) or on kill(token); reaps it and
                                                    writes its wait status, and why it was killed,
                                                    to the run's status pipe
                                                  child: (as root) an IPC namespace of its own, uid
                                                    nobody, no_new_privs, rlimits (CORE, NOFILE,
                                                    NPROC; AS and CPU once it has a run), dies with
                                                    the zygote; warms up, waits for a run, makes the
                                                    run's pipe its stderr, runs it with
                                                    restricted.run_restricted, its operators proxied
                                                    to the parent (stubs.py), at most
                                                    MAX_CALLS_IN_FLIGHT at a time

Every run gets a process of its own, used once: nothing a workflow does outlives its run,
SysV shared memory and message queues included (they live in the child's IPC namespace, which
ends with it). What the run prints to stderr, asyncio's logger included, goes to its own pipe,
of which the parent keeps a bounded part: never to the host's stderr.
Forking and warming up a child costs CPU (the fork and its copy-on-write faults; bench/RESULTS.md,
"Workflow isolation overhead"), which the spares take off the path of the run. The zygote itself
never runs workflow code, and a spare has run only the zygote's own warm-up workflow.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import NoReturn

from scoreflow.workflow.context import RunLimits, WorkflowConfig
from scoreflow.workflow.prompts import FAMILY_OPERATORS
from scoreflow.workflow.restricted import run_restricted
from scoreflow.sandbox.child import (CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, NOBODY, PR_SET_NO_NEW_PRIVS,
                                     PR_SET_PDEATHSIG, enter_empty_root, libc, unshare)
from scoreflow.workflow.stubs import stub_operators
from scoreflow.workflow.wire import frame, read_message

KILL_GRACE_S = 0.5            # past the deadline, the zygote kills a child that has not ended itself
MEMORY_EXIT = 3               # a child's exit status when it ran out of memory outside the workflow
CRASH_EXIT = 4                # ... when our own code in the child failed
MAX_OPEN_FILES = 32
RECURSION_LIMIT = 1000
MAX_REPLY_BYTES = 256 << 20   # what a child accepts from the (trusted) parent
CHANNEL_FD = 3                # where a child keeps its socket to the zygote, on which its run arrives
SPARES = 2                    # children kept forked and warm, waiting for a run
MAX_CALLS_IN_FLIGHT = 16      # a run's operator calls the parent works on at once; more wait in the child
MAX_REQUEST_BYTES_PER_RUN = 16 << 20  # all operator requests of a run, as framed: what the parent decodes


@dataclass(frozen=True)
class Spawn:
    """A spawn request's limits: `deadline` is a time.monotonic() value."""

    token: int
    deadline: float
    cpu_s: int
    memory_mb: int


# ----------------------------------------------------------------------------- the zygote

def main(control_fd: int) -> NoReturn:
    control = socket.socket(fileno=control_fd)
    _warm_up()
    facts = _seal()
    gc.freeze()  # the warm heap stays shared with every child instead of being copied by the collector
    control.send(json.dumps({"ready": facts}).encode())
    _Zygote(control).serve()


def _seal() -> dict:
    """As root: no network, no files and none of the host's SysV IPC objects for anything
    forked from here on. Best effort: without the privilege the children still get their rlimits."""
    if os.geteuid() != 0:
        return {"sealed": False, "why": "not root"}
    refused = unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC)
    if refused is not None:
        return {"sealed": False, "why": refused}
    enter_empty_root()
    return {"sealed": True}


class _Zygote:
    def __init__(self, control: socket.socket):
        self.control = control
        self.children: dict[int, tuple[Spawn, int]] = {}  # pid -> (its spawn request, its status fd)
        self.killed: dict[int, str] = {}  # pid -> why we killed it
        self.spares: dict[int, socket.socket] = {}  # pid -> the channel its run will arrive on
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd sees SIGCHLD
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)
        self.selector.register(wake_r, selectors.EVENT_READ)
        self.wake_r = wake_r

    def serve(self) -> NoReturn:
        while True:
            self._refill()
            pending = [spawn.deadline + KILL_GRACE_S for pid, (spawn, _) in self.children.items()
                       if pid not in self.killed]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.control:
                    self._receive()
                else:
                    os.read(self.wake_r, 4096)
            self._reap()
            self._expire()

    def _receive(self) -> None:
        message, fds, _, _ = socket.recv_fds(self.control, 4096, 3)
        if not message:  # the parent is gone: so are its runs
            for pid in [*self.children, *self.spares]:
                os.kill(pid, signal.SIGKILL)
            os._exit(0)
        request = json.loads(message)
        if "spawn" in request and len(fds) == 3:
            self._spawn(Spawn(request["spawn"], request["deadline"], request["cpu_s"], request["memory_mb"]), *fds)
            return
        for fd in fds:
            os.close(fd)
        if "kill" in request:
            self._kill(request["kill"], "stopped")

    def _spawn(self, spawn: Spawn, proto_fd: int, status_fd: int, stderr_fd: int) -> None:
        """Give the run to a spare; the spare keeps the socket and the stderr pipe, the zygote
        the status pipe."""
        try:
            pid = next(iter(self.spares)) if self.spares else self._fork()
            os.setpriority(os.PRIO_PROCESS, pid, 0)  # back from the warm-up's low priority
            with self.spares.pop(pid) as channel:
                socket.send_fds(channel, [json.dumps(asdict(spawn)).encode()], [proto_fd, stderr_fd])
            self.children[pid] = (spawn, status_fd)
        except OSError as e:
            _report(status_fd, {"spawn_error": str(e)})
        finally:
            os.close(proto_fd)
            os.close(stderr_fd)

    def _refill(self) -> None:
        try:
            while len(self.spares) < SPARES:
                self._fork()
        except OSError:
            pass  # out of processes or memory: runs then fail to start, with the reason

    def _fork(self) -> int:
        """A new spare: forked, then confining and warming itself up in parallel."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            os.nice(19)  # warming up must not slow the runs under way
            _child(theirs.fileno(), zygote)
        theirs.close()
        self.spares[pid] = ours
        return pid

    def _kill(self, token: int, why: str) -> None:
        for pid, (spawn, _) in self.children.items():
            if spawn.token == token and pid not in self.killed:
                os.kill(pid, signal.SIGKILL)  # not yet reaped, so the pid is still this child's
                self.killed[pid] = why

    def _expire(self) -> None:
        now = time.monotonic()
        for pid, (spawn, _) in self.children.items():
            if now > spawn.deadline + KILL_GRACE_S and pid not in self.killed:
                os.kill(pid, signal.SIGKILL)
                self.killed[pid] = "deadline"

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.spares:  # died waiting (the OOM killer?): _refill replaces it
                self.spares.pop(pid).close()
            if pid not in self.children:  # a spare that never got its run
                continue
            _, status_fd = self.children.pop(pid)
            _report(status_fd, {"wait_status": status, "killed": self.killed.pop(pid, None)})


def _report(fd: int, facts: dict) -> None:
    try:
        os.write(fd, json.dumps(facts).encode())
    except OSError:
        pass  # the parent stopped waiting for this run
    os.close(fd)


# ----------------------------------------------------------------------------- a child

def _child(channel_fd: int, zygote: int) -> NoReturn:
    """Runs in a forked child: confine it, warm it up, wait for its run, run it, exit
    without cleanup."""
    try:
        os.dup2(channel_fd, CHANNEL_FD)
        os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))  # the control socket, others' pipes
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _confine(zygote)
        _silence_workflow_noise()
        _warm_up()  # the copy-on-write faults of a run, taken before it is waited for
        channel = socket.socket(fileno=CHANNEL_FD)
        message, fds, _, _ = socket.recv_fds(channel, 4096, 2)
        if not fds:
            os._exit(0)  # the zygote is gone
        channel.close()
        proto_fd, stderr_fd = fds
        _take_stderr(stderr_fd)
        _limit(Spawn(**json.loads(message)))
        os._exit(asyncio.run(_session(socket.socket(fileno=proto_fd))))
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except BaseException:  # noqa: BLE001 - our own failure; the workflow's are outcomes
        try:
            traceback.print_exc()
        finally:
            os._exit(CRASH_EXIT)


def _confine(zygote: int) -> None:
    for kind, limit in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, MAX_OPEN_FILES)):
        resource.setrlimit(kind, (limit, limit))
    if os.geteuid() == 0:
        # SysV shared memory, semaphores and message queues of its own, outside every rlimit but
        # freed with the namespace when this process ends (refused only where _seal was too)
        unshare(CLONE_NEWIPC)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no processes, no threads (root would be exempt)
    libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    if os.getppid() != zygote:
        os._exit(CRASH_EXIT)  # the zygote died before the line above
    sys.setrecursionlimit(RECURSION_LIMIT)


def _silence_workflow_noise() -> None:
    """What Python prints on its own about the workflow's objects would reach the host's stderr,
    which this process shares: a RuntimeWarning for an operator call never awaited, an
    "Exception ignored" when such a coroutine is finalised where the restricted builtins have no
    __import__. The workflow's failures are outcomes, so these are dropped; our own crashes
    still print their traceback (_child)."""
    warnings.simplefilter("ignore")
    sys.unraisablehook = lambda unraisable: None


def _take_stderr(fd: int) -> None:
    """Make the run's pipe this process's stderr (fd 2, so C-level writes go there too): the
    parent keeps its first bytes and closes it, so whatever the workflow makes Python or
    asyncio's logger print costs the host a bounded read and never reaches its stderr."""
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)


def _limit(spawn: Spawn) -> None:
    """The run's limits: its whole address space, and CPU time on top of the warm-up's
    (lowering a hard limit needs no privilege)."""
    memory = spawn.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = math.ceil(used.ru_utime + used.ru_stime) + spawn.cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


async def _session(sock: socket.socket) -> int:
    """Read the job, run it with operator calls sent to the parent, send the outcome."""
    reader, writer = await asyncio.open_connection(sock=sock)
    job = await read_message(reader, MAX_REPLY_BYTES)
    limits = RunLimits(max_steps=job["max_steps"], deadline=job["deadline"])
    gateway = _Gateway(writer, limits, job["max_requests"])
    replies = asyncio.create_task(gateway.dispatch(reader))
    config = WorkflowConfig(job["family"], job["model"], limits)
    operators = stub_operators(FAMILY_OPERATORS[job["family"]], gateway)
    outcome = await run_restricted(job["code"], job["problem"], limits, config, operators, job["timeout_s"])
    writer.write(frame({"result": asdict(outcome)}))
    await writer.drain()
    replies.cancel()
    return 0


class _Gateway:
    """The run's operator calls, sent to the parent as {"id", "call"} messages. The parent's
    work for a run stays bounded: at most MAX_CALLS_IN_FLIGHT calls at a time (the others wait
    here, where they cost the parent nothing), at most `max_requests` requests and
    MAX_REQUEST_BYTES_PER_RUN bytes of them in all (then the run ends with an error), and a
    call the workflow abandons (a gathered sibling raised) is cancelled there too, by a
    {"cancel": id} message. The parent checks each of these bounds again (isolation.py):
    this process runs untrusted code."""

    def __init__(self, writer: asyncio.StreamWriter, limits: RunLimits, max_requests: int):
        self.writer, self.limits, self.max_requests = writer, limits, max_requests
        self.slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        self.pending: dict[int, asyncio.Future] = {}
        self.sent = 0  # also the next call's id: ids count up from 0
        self.sent_bytes = 0

    async def __call__(self, request: dict) -> dict:
        async with self.slots:
            self.limits.check()  # a call that waited for its slot must not start after the run was stopped
            call_id = self.sent
            if call_id == self.max_requests:
                self.limits.abort("error", f"more than {self.max_requests} operator requests "
                                           f"(abandoned calls included)")
            data = frame({"id": call_id, "call": request})
            if self.sent_bytes + len(data) > MAX_REQUEST_BYTES_PER_RUN:
                self.limits.abort("error", f"more than {MAX_REQUEST_BYTES_PER_RUN >> 20} MiB of operator requests "
                                           f"(abandoned calls included)")
            self.sent, self.sent_bytes = call_id + 1, self.sent_bytes + len(data)
            reply = self.pending[call_id] = asyncio.get_running_loop().create_future()
            self.writer.write(data)
            try:
                return await reply
            except asyncio.CancelledError:
                self.writer.write(frame({"cancel": call_id}))
                raise
            finally:
                del self.pending[call_id]

    async def dispatch(self, reader: asyncio.StreamReader) -> None:
        """Hand each reply to the call waiting for it (the parent closes the socket only after
        asking the zygote to kill this process)."""
        while (message := await read_message(reader, MAX_REPLY_BYTES)) is not None:
            reply = self.pending.get(message["id"])
            if reply is not None and not reply.done():
                reply.set_result(message["reply"])


# ----------------------------------------------------------------------------- warm-up

_WARM_UP = '''
class Workflow:
    def __init__(self, config, problem):
        self.custom = operator.Custom(config)

    async def run_workflow(self):
        found = await asyncio.gather(self.custom(instruction="a"), self.custom(instruction=["b", ("c",)]))
        print(len(found), {"k": [1, 2.5, None, True]}, sep=", ")
        try:
            found[5]
        except IndexError as e:
            print(e)
        if len(found) > 1:
            raise ValueError("warm")
        return found
'''


def _warm_up() -> None:
    """One run through the child's whole path (socket, stubs, gather, print, an error), so
    every lazily imported module and cache is in the template before it is sealed."""
    async def parent(sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(frame({"code": _WARM_UP, "problem": "p", "family": "math", "model": "m", "timeout_s": 10.0,
                            "deadline": time.monotonic() + 10, "max_steps": 1000, "max_requests": 10}))
        while "result" not in (message := await read_message(reader, MAX_REPLY_BYTES)):
            writer.write(frame({"id": message["id"], "reply": {"ok": {"response": "r"}}}))
        assert message["result"]["error"].startswith("ValueError: warm"), message

    async def both() -> None:
        ours, theirs = socket.socketpair()
        await asyncio.gather(parent(ours), _session(theirs))
        ours.close()
        theirs.close()

    asyncio.run(both())


if __name__ == "__main__":
    main(int(sys.argv[1]))
