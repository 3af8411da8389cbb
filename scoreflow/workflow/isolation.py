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

What a worker can make this process do is bounded per run, whatever code it runs: messages
of at most MAX_WORKER_MESSAGE_BYTES each and MAX_WORKER_BYTES_PER_RUN in all (refused from
their header, before they are read or decoded), at most worker.MAX_CALLS_IN_FLIGHT operator
calls at a time and the call budget plus that many requests in all; a call the worker
abandons is cancelled here. The worker's own gateway keeps these bounds, so a breach is a
protocol violation. The worker's stderr is a pipe of its own, of which the first
WORKER_STDERR_BYTES are read (and shown if the process failed) before it is closed: nothing
a workflow makes the worker print reaches this process's stderr. Nor is anything written to
a worker that is gone (asyncio would warn about each write on our stderr).
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
from scoreflow.workflow.stubs import MAX_REQUEST_BYTES
from scoreflow.workflow.wire import ProtocolError, decode, frame, read_frame
from scoreflow.workflow.worker import (CRASH_EXIT, KILL_GRACE_S, MAX_CALLS_IN_FLIGHT, MAX_REQUEST_BYTES_PER_RUN,
                                       MEMORY_EXIT)

MAX_WORKERS = 32
WORKER_MEMORY_MB = 1024       # RLIMIT_AS of a worker: its whole address space
# The largest message a worker's own code sends: a request in its envelope, or a result (its
# clipped texts, about 61,000 characters of at most 12 bytes each ASCII-escaped: 0.75 MiB).
MAX_WORKER_MESSAGE_BYTES = MAX_REQUEST_BYTES + 1024
# Its requests, then room for the cancels (a few dozen bytes each) and the result.
MAX_WORKER_BYTES_PER_RUN = MAX_REQUEST_BYTES_PER_RUN + MAX_WORKER_MESSAGE_BYTES
WORKER_STDERR_BYTES = 8 << 10  # what is kept of a run's stderr
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
        self.calls: set[asyncio.Task] = set()  # every operator call not yet ended, abandoned ones included
        self.in_flight: dict[int, asyncio.Task] = {}  # the calls whose reply the worker still waits for, by id
        self.requests = 0
        self.bytes_left = MAX_WORKER_BYTES_PER_RUN
        # the call budget, and the requests of the calls in flight when it ran out (worker._Gateway)
        self.max_requests = host.ctx.max_calls + MAX_CALLS_IN_FLIGHT
        self.timed_out = False
        self.violation: str | None = None
        self.template = _Template.get()

    async def run(self, code: str, problem: str) -> Outcome:
        ctx, config = self.host.ctx, self.host.config
        ours, theirs = socket.socketpair()
        (status_r, status_w), (stderr_r, stderr_w) = os.pipe(), os.pipe()
        token = next(_tokens)
        try:
            self._spawn(token, (theirs.fileno(), status_w, stderr_w))
        except BaseException:
            ours.close()
            os.close(status_r)
            os.close(stderr_r)
            raise
        finally:
            theirs.close()
            os.close(status_w)
            os.close(stderr_w)
        stderr = _StderrHead(stderr_r)
        try:
            outcome = await self._talk(ours, {"code": code, "problem": problem, "family": config.family,
                                              "model": config.model, "timeout_s": self.timeout_s,
                                              "deadline": ctx.deadline, "max_steps": ctx.max_steps,
                                              "max_requests": self.max_requests}, token)
            # with an outcome, how the (already killed) worker ended adds nothing: do not wait for it
            return outcome if outcome is not None else self._death(await _read_status(status_r), stderr.text())
        finally:
            os.close(status_r)
            stderr.close()

    def _spawn(self, token: int, fds: tuple[int, int, int]) -> None:
        cpu_s = math.ceil(self.timeout_s) + 1  # a backstop: the wall clock ends runs first
        try:
            self.template.spawn(token, fds, self.host.ctx.deadline, cpu_s)
        except OSError:  # the template died since we looked: start another, once
            _Template.discard(self.template)
            self.template = _Template.get()
            self.template.spawn(token, fds, self.host.ctx.deadline, cpu_s)

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
        while (data := await read_frame(reader, min(MAX_WORKER_MESSAGE_BYTES, self.bytes_left))) is not None:
            self.bytes_left -= len(data)
            message = decode(data)
            if not isinstance(message, dict):
                raise ProtocolError("a message that is not an object")
            if "result" in message:
                return self._outcome(message["result"])
            if "cancel" in message:
                self._cancel(message["cancel"])
            else:
                self._start(message, writer)
        return None

    def _start(self, message: dict, writer: asyncio.StreamWriter) -> None:
        """Start serving an operator call, within the bounds the worker's gateway keeps."""
        call_id = self.requests
        if message.get("id") != call_id:
            raise ProtocolError(f"an operator call whose id is not {call_id} (ids count up from 0)")
        self.requests += 1
        if self.requests > self.max_requests:
            raise ProtocolError(f"more than {self.max_requests} operator requests")
        if len(self.in_flight) == MAX_CALLS_IN_FLIGHT:
            raise ProtocolError(f"more than {MAX_CALLS_IN_FLIGHT} operator calls in flight")
        request = self.host.parse(message.get("call"))
        call = asyncio.create_task(self._answer(call_id, request, writer))
        self.in_flight[call_id] = call
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)

    def _cancel(self, call_id: object) -> None:
        """The worker abandoned a call (a gathered sibling raised): stop it. A call that ended
        meanwhile, its reply on the way, is no longer in flight."""
        if not isinstance(call_id, int):
            raise ProtocolError("a cancel without an integer id")
        call = self.in_flight.pop(call_id, None)
        if call is not None:
            call.cancel()

    async def _answer(self, call_id: int, request: tuple, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self.host.call(*request)
        finally:
            # before the reply is written, so this count never trails the worker's (which
            # frees the slot once it has read the reply)
            self.in_flight.pop(call_id, None)
        if writer.is_closing():
            return  # the worker is gone: a write would only make asyncio warn on our stderr
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

    def _death(self, ended: dict | None, stderr: str) -> Outcome:
        """The outcome of a worker that sent none: how it ended decides (`stderr`: the part of
        what it wrote there that was kept)."""
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
            return Outcome("error", f"the workflow process failed; the end of its stderr: {stderr[-MAX_ERROR_CHARS:]}")
        return Outcome("error", f"the workflow process ended without a result (exit status {code})")


def _clean(text: str) -> str:
    """Lone surrogates (valid in JSON, not in UTF-8) replaced, so logs can store the text."""
    return text.encode("utf-8", "replace").decode("utf-8")


class _StderrHead:
    """The first WORKER_STDERR_BYTES a worker writes to its stderr pipe, read as they come;
    then the pipe is closed, so the worker's later writes fail there and cost us nothing."""

    def __init__(self, fd: int):
        self.fd, self.kept = fd, bytearray()
        self.loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._read)

    def _read(self) -> None:
        while self.fd >= 0:
            try:
                data = os.read(self.fd, WORKER_STDERR_BYTES - len(self.kept))
            except BlockingIOError:
                return
            self.kept += data
            if not data or len(self.kept) == WORKER_STDERR_BYTES:
                self.close()

    def text(self) -> str:
        """What was kept, with what is in the pipe now."""
        self._read()
        return self.kept.decode("utf-8", "replace")

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


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

    def spawn(self, token: int, fds: tuple[int, int, int], deadline: float, cpu_s: int) -> None:
        """Start a run: `fds` are its socket, status pipe and stderr pipe (write ends)."""
        request = {"spawn": token, "deadline": deadline, "cpu_s": cpu_s, "memory_mb": WORKER_MEMORY_MB}
        socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))

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
