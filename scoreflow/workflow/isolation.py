"""Run a workflow's code in a worker process and serve its operator calls from here.

    outcome = await run_isolated(code, problem, host, timeout_s)   # host: OperatorHost of the run

The worker (worker.py) is forked from a warm template per run; this module starts that
template on first use (and again if it died), hands it each run's socket and status pipe,
serves the run's operator calls with the real operators (host.py), and turns however the
worker ended into an `Outcome`:

    a result message             the worker's outcome (checked: it is untrusted data)
    killed at the deadline       timeout
    CPU limit (SIGXCPU)          timeout
    out of memory                error, "memory: ..."
    any other signal             error, naming the signal (SIGSEGV: e.g. a C stack overflow)
    a malformed message          error; the worker is killed

When the worker ends, operator calls still in flight are cancelled, and nothing it sent
later is served: no executor call starts after run_isolated returns. At most MAX_WORKERS
workers run at a time per event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from scoreflow.workflow.context import clip
from scoreflow.workflow.host import OperatorHost
from scoreflow.workflow.restricted import MAX_ANSWER_CHARS, MAX_ERROR_CHARS, MAX_PRINT_CHARS, Outcome
from scoreflow.workflow.wire import ProtocolError, frame, read_message
from scoreflow.workflow.worker import CRASH_EXIT, KILL_GRACE_S, MEMORY_EXIT

MAX_WORKERS = 32
WORKER_MEMORY_MB = 1024       # RLIMIT_AS of a worker: its whole address space
MAX_WORKER_MESSAGE_BYTES = 16 << 20
MAX_CALLS_PER_RUN = 20_000    # operator requests; our stubs stop at the call budget (50) + one gather (<= MAX_RANGE)
STARTUP_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 10.0       # after the kill, for the template to report how the worker ended
WORKER_STATUSES = ("ok", "error", "timeout", "empty", "executor_error")


class WorkerStartError(RuntimeError):
    """The worker template could not be started: the environment, not a workflow, is at fault."""


async def run_isolated(code: str, problem: str, host: OperatorHost, timeout_s: float) -> Outcome:
    """Run `code` on `problem` in a fresh worker; its clock (host's RunContext deadline)
    starts once a worker slot is free."""
    async with _slots():
        run = _Run(host, timeout_s)  # the first run of a process starts the template (a fraction of a second)
        host.ctx.deadline = time.monotonic() + timeout_s
        return await run.run(code, problem)


class _Run:
    def __init__(self, host: OperatorHost, timeout_s: float):
        self.host, self.timeout_s = host, timeout_s
        self.calls: set[asyncio.Task] = set()
        self.requests = 0
        self.timed_out = False
        self.violation: str | None = None
        self.template = _Template.get()

    async def run(self, code: str, problem: str) -> Outcome:
        ctx, config = self.host.ctx, self.host.config
        ours, theirs = socket.socketpair()
        status_r, status_w = os.pipe()
        token = next(_tokens)
        try:
            self._spawn(token, theirs.fileno(), status_w)
        except BaseException:
            ours.close()
            os.close(status_r)
            raise
        finally:
            theirs.close()
            os.close(status_w)
        try:
            outcome = await self._talk(ours, {"code": code, "problem": problem, "family": config.family,
                                              "model": config.model, "timeout_s": self.timeout_s,
                                              "deadline": ctx.deadline, "max_steps": ctx.max_steps}, token)
            # with an outcome, how the (already killed) worker ended adds nothing: do not wait for it
            return outcome if outcome is not None else self._death(await _read_status(status_r))
        finally:
            os.close(status_r)

    def _spawn(self, token: int, sock_fd: int, status_fd: int) -> None:
        cpu_s = math.ceil(self.timeout_s) + 1  # a backstop: the wall clock ends runs first
        try:
            self.template.spawn(token, sock_fd, status_fd, self.host.ctx.deadline, cpu_s)
        except OSError:  # the template died since we looked: start another, once
            _Template.discard(self.template)
            self.template = _Template.get()
            self.template.spawn(token, sock_fd, status_fd, self.host.ctx.deadline, cpu_s)

    async def _talk(self, sock: socket.socket, job: dict, token: int) -> Outcome | None:
        """Send the job and serve the worker until it sends its outcome or ends; then make
        sure it is gone and no call of it still runs."""
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(frame(job))
            limit = self.host.ctx.deadline + KILL_GRACE_S + 1.0 - time.monotonic()
            return await asyncio.wait_for(self._serve(reader, writer), limit)
        except asyncio.TimeoutError:
            self.timed_out = True
        except ProtocolError as e:
            self.violation = str(e)
        except ConnectionError:
            pass  # the worker died with our reply unread: how it ended says why
        finally:
            self.template.kill(token)
            for call in self.calls:
                call.cancel()
            await asyncio.gather(*self.calls, return_exceptions=True)
            writer.close()
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Outcome | None:
        while (message := await read_message(reader, MAX_WORKER_MESSAGE_BYTES)) is not None:
            if not isinstance(message, dict):
                raise ProtocolError("a message that is not an object")
            if "result" in message:
                return self._outcome(message["result"])
            call_id, request = message.get("id"), self.host.parse(message.get("call"))
            if not isinstance(call_id, int):
                raise ProtocolError("an operator call without an integer id")
            self.requests += 1
            if self.requests > MAX_CALLS_PER_RUN:
                raise ProtocolError(f"more than {MAX_CALLS_PER_RUN} operator requests")
            call = asyncio.create_task(self._answer(call_id, request, writer))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)
        return None

    async def _answer(self, call_id: int, request: tuple, writer: asyncio.StreamWriter) -> None:
        reply = await self.host.call(*request)
        try:
            writer.write(frame({"id": call_id, "reply": reply}))
            await writer.drain()
        except ConnectionError:
            pass  # the worker is gone; _talk finds out how it ended

    def _outcome(self, result: object) -> Outcome:
        """The worker's outcome, checked and bounded like any input from it."""
        try:
            status, error, raw, printed = (result[k] for k in ("status", "error", "raw", "printed"))
        except (KeyError, TypeError):
            raise ProtocolError("a malformed result") from None
        if status not in WORKER_STATUSES or not all(isinstance(t, str) for t in (raw, printed)) \
                or not (error is None or isinstance(error, str)):
            raise ProtocolError(f"a malformed result (status {clip(repr(status), 50)})")
        if status == "executor_error" and self.host.ctx.stopped() is None:
            raise ProtocolError("an executor error the parent did not see")
        error = None if error is None else clip(_clean(error), MAX_ERROR_CHARS)
        return Outcome(status, error, clip(_clean(raw), MAX_ANSWER_CHARS), clip(_clean(printed), MAX_PRINT_CHARS))

    def _death(self, ended: dict | None) -> Outcome:
        """The outcome of a worker that sent none: how it ended decides."""
        if self.violation is not None:
            return Outcome("error", f"the workflow process broke the protocol: {clip(self.violation, 200)}")
        late = f"did not finish within {self.timeout_s:g} s"
        if self.timed_out or ended is not None and ended.get("killed") == "deadline":
            return Outcome("timeout", f"{late} (the workflow process was stopped)")
        if ended is None:  # the template died or hangs: the next run starts a new one
            _Template.discard(self.template)
            return Outcome("error", "the workflow process's supervisor (the worker template) did not report")
        if "wait_status" not in ended:
            return Outcome("error", f"the workflow process could not be started: {ended.get('spawn_error')}")
        code = os.waitstatus_to_exitcode(ended["wait_status"])
        if code == -signal.SIGXCPU:
            return Outcome("timeout", f"{late}: the workflow process used up its CPU time")
        if code == MEMORY_EXIT:
            return Outcome("error", f"memory: the workflow process ran out of memory ({WORKER_MEMORY_MB} MB)")
        if code < 0:
            name = signal.Signals(-code).name
            return Outcome("error", f"the workflow process died from {name} ({signal.strsignal(-code)})")
        if code == CRASH_EXIT:
            return Outcome("error", "the workflow process failed (see its traceback on stderr)")
        return Outcome("error", f"the workflow process ended without a result (exit status {code})")


def _clean(text: str) -> str:
    """Lone surrogates (valid in JSON, not in UTF-8) replaced, so logs can store the text."""
    return text.encode("utf-8", "replace").decode("utf-8")


async def _read_status(fd: int) -> dict | None:
    """What the template wrote to the run's status pipe (it closes the pipe after), or None."""
    loop, done = asyncio.get_running_loop(), asyncio.Event()
    chunks: list[bytes] = []

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        chunks.append(data)
        if not data:
            done.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done.wait(), STATUS_TIMEOUT_S)
        return json.loads(b"".join(chunks))
    except (asyncio.TimeoutError, ValueError):
        return None
    finally:
        loop.remove_reader(fd)


_tokens = itertools.count()
_slot_by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _slot_by_loop:
        _slot_by_loop[loop] = asyncio.Semaphore(MAX_WORKERS)
    return _slot_by_loop[loop]


class _Template:
    """The process-wide worker template (the zygote), started on first use; after a fork
    of this process, or after it died, the next use starts a new one."""

    _lock = threading.Lock()
    _current: _Template | None = None

    @classmethod
    def get(cls) -> _Template:
        with cls._lock:
            current = cls._current
            if current is None or current.owner != os.getpid() or current.process.poll() is not None:
                if current is not None:
                    current.close()  # its descriptor (and, if dead, its exit status)
                cls._current = current = cls()
            return current

    @classmethod
    def discard(cls, template: _Template) -> None:
        """Stop `template` if it is still the current one (a run that saw it fail)."""
        with cls._lock:
            if cls._current is template:
                template.close()
                cls._current = None

    def __init__(self):
        self.owner = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "PYTHONPATH": package_root}  # no API keys
        self.process = subprocess.Popen(
            [sys.executable, "-s", "-B", "-m", "scoreflow.workflow.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)  # Ctrl-C in a terminal reaches the caller, which ends the runs
        theirs.close()
        self.control = ours
        ours.settimeout(STARTUP_TIMEOUT_S)
        try:
            ready = json.loads(ours.recv(4096) or b"{}")
        except (OSError, ValueError):
            ready = {}
        if "ready" not in ready:
            self.close()
            raise WorkerStartError(f"the workflow worker template did not start (exit status {self.process.poll()}; "
                                   f"its stderr above says why)")
        ours.settimeout(None)
        self.facts = ready["ready"]
        atexit.register(self.close)

    def spawn(self, token: int, sock_fd: int, status_fd: int, deadline: float, cpu_s: int) -> None:
        request = {"spawn": token, "deadline": deadline, "cpu_s": cpu_s, "memory_mb": WORKER_MEMORY_MB}
        socket.send_fds(self.control, [json.dumps(request).encode()], [sock_fd, status_fd])

    def kill(self, token: int) -> None:
        try:
            self.control.send(json.dumps({"kill": token}).encode())
        except OSError:
            pass  # the template is gone, and its workers with it

    def close(self) -> None:
        """Closing the control socket ends the template and every worker it still has."""
        self.control.close()
        if os.getpid() != self.owner:
            return  # a forked copy of the owner: the template is not our child to wait for
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
