"""The parent side of the sandbox (see __init__.py): take a share of the memory budget, start
child.py in a new session, give it a checks run's nonce and checks on stdin, drain and cap
its output and report pipe, kill its process group at the time limit, and read its set-up
facts and report."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from scoreflow.sandbox.budget import PROCESS_BUDGET, MemoryBudget
from scoreflow.sandbox.child import REPORTED, clipped

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
DRAIN_GRACE_S = 1.0               # after the process ends, wait this long for pipes to close
FACTS_LIMIT = 64 << 10            # the set-up facts: one short JSON line


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    status: "ok" (exit 0; with `checks`, also the nonce back: the checks ran to their end),
    "error" (exception, non-zero exit, or an early end; traceback in stderr), "timeout" (we
    killed it at timeout_s), "killed" (died from any other signal, e.g. a segfault or the CPU
    limit). `value` is str() of the `call` expression, None without one. `isolated` is True
    when the run had its own network, mount, PID and IPC namespaces and an unprivileged uid;
    False means part of that was unavailable (see the module docstring).
    """

    status: str
    stdout: str
    stderr: str
    value: str | None
    returncode: int
    duration_s: float
    isolated: bool

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_python(code: str, **options: Any) -> SandboxResult:
    """Blocking form of `run_python_async` (same keyword options); not for use inside a
    running event loop."""
    return asyncio.run(run_python_async(code, **options))


async def run_python_async(code: str, *, call: str | None = None, checks: str | None = None,
                           timeout_s: float = 10.0, memory_mb: int = 1024, max_output_bytes: int = 64 * 1024,
                           audit_hook: bool = True, budget: MemoryBudget = PROCESS_BUDGET) -> SandboxResult:
    """Run `code` as a module in a fresh sandboxed process; if `call` is given (e.g.
    "solve()"), evaluate it in the module's namespace afterwards and return str() of it.

    `checks` (trusted code, e.g. a task's tests; not with `call`) runs after `code`, in its
    namespace; the run is "ok" only if the checks ran to their end, which the child proves
    by sending back a nonce made here for this run (see __init__.py). The program never
    sees the checks in a file, its argv or its environment.

    The run waits for `memory_mb` of `budget` (budget.py). stdout, stderr and the value are
    each cut to `max_output_bytes` with a marker. `audit_hook=False` leaves out the
    in-process defence layer; it exists so tests can show the OS-level isolation holds on
    its own — keep it on in real use.
    """
    if call is not None and checks is not None:
        raise ValueError("a sandbox run takes `call` or `checks`, not both")
    nonce = None if checks is None else secrets.token_hex(16)
    async with budget.share(memory_mb):
        workdir = tempfile.mkdtemp(prefix="scoreflow_sandbox_")
        try:
            with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
                f.write(code)
            config = dict(workdir=workdir, call=call, checks=checks is not None, timeout_s=timeout_s,
                          memory_mb=memory_mb, max_output_bytes=max_output_bytes, audit_hook=audit_hook)
            secret = b"" if checks is None else f"{nonce}\n{checks}".encode()
            return await _supervise(config, secret, nonce)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


async def _supervise(config: dict, secret: bytes, nonce: str | None) -> SandboxResult:
    limit = config["max_output_bytes"]
    facts_pipe, report_pipe = os.pipe(), os.pipe()
    config.update(facts_fd=facts_pipe[1], report_fd=report_pipe[1])
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-u", "-B", "-X", "utf8", CHILD, json.dumps(config),
            cwd=config["workdir"], env=_child_env(config["workdir"]), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, pass_fds=(facts_pipe[1], report_pipe[1]))
    except BaseException:
        os.close(facts_pipe[0])
        os.close(report_pipe[0])
        raise
    finally:  # the child holds the write ends now; EOF comes when it is gone
        os.close(facts_pipe[1])
        os.close(report_pipe[1])
    out, err, facts, report = _Capture(limit), _Capture(limit), _Capture(FACTS_LIMIT), _Capture(limit + 1)
    async with _read_pipe(facts_pipe[0]) as facts_stream, _read_pipe(report_pipe[0]) as report_stream:
        readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr), facts.drain(facts_stream),
                                 report.drain(report_stream), _feed(proc.stdin, secret))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), config["timeout_s"])
        except asyncio.TimeoutError:  # builtin TimeoutError only from 3.11 on
            timed_out = True
        finally:  # also on cancellation: never leave the group running or unreaped
            _kill_group(proc.pid)
            await proc.wait()
            try:
                await asyncio.wait_for(readers, DRAIN_GRACE_S)
            except asyncio.TimeoutError:
                pass  # a fallback-mode escapee keeps a pipe open; keep what was read
    duration = time.monotonic() - start

    setup = _setup_facts(bytes(facts.kept))
    if "setup_error" in setup:
        raise SandboxError(f"could not set up the sandbox: {setup['setup_error']}")
    if setup.get("isolated") is False:
        warnings.warn(f"sandbox runs with reduced isolation: {setup.get('note', 'unknown reason')}",
                      RuntimeWarning, stacklevel=2)
    reported = report.kept[:1] == REPORTED
    value = clipped(bytes(report.kept[1:]), report.total - 1) if config["call"] is not None and reported else None
    proven = nonce is not None and bytes(report.kept) == REPORTED + nonce.encode()
    code, stderr = proc.returncode, err.text()
    if timed_out:
        status = "timeout"
    elif code < 0:
        status = "killed"
    elif code != 0:
        status = "error"
    elif config["call"] is not None and value is None:
        status = "error"
        stderr += f"\n[sandbox: the program exited before `{config['call']}` returned]"
    elif nonce is not None and not proven:
        status = "error"
        stderr += "\n[sandbox: the program ended before its checks did]"
    else:
        status = "ok"
    return SandboxResult(status, out.text(), stderr, value, code, duration, setup.get("isolated") is True)


def _child_env(workdir: str) -> dict[str, str]:
    """A minimal environment: nothing of ours (API keys!) leaks into generated code."""
    single_thread = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # (BLAS thread pools would count against RLIMIT_NPROC and RLIMIT_AS)
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8", **single_thread}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Capture:
    """Keeps the first `limit` bytes of a stream and keeps draining (and counting) the rest,
    so the child never blocks on a full pipe and the parent never holds more than `limit`."""

    def __init__(self, limit: int):
        self.limit, self.kept, self.total = limit, bytearray(), 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            self.kept += chunk[: self.limit - len(self.kept)]
            self.total += len(chunk)

    def text(self) -> str:
        return clipped(bytes(self.kept), self.total)


def _setup_facts(written: bytes) -> dict:
    """The JSON line the child wrote before the program ran: setup_error, or isolated and
    note. The program never holds this pipe, but where it runs as the caller's uid (the
    fallbacks) it could open the parent's end through /proc: only the first line counts."""
    try:
        facts = json.loads(written.partition(b"\n")[0])
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


@asynccontextmanager
async def _read_pipe(fd: int) -> AsyncIterator[asyncio.StreamReader]:
    """The read end of an os.pipe() as a stream; closed on leaving."""
    stream = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), open(fd, "rb", buffering=0))
    try:
        yield stream
    finally:
        transport.close()


async def _feed(stdin: asyncio.StreamWriter, secret: bytes) -> None:
    """Write a checks run's nonce and checks to the child's stdin, then close it (a run without
    checks reads EOF there, as from /dev/null)."""
    try:
        stdin.write(secret)
        await stdin.drain()
    except ConnectionError:  # the child ended before reading it all (set-up failed, killed)
        pass
    finally:
        stdin.close()
