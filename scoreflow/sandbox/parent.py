"""The parent side of the sandbox (see __init__.py): start child.py in a new session, drain and
cap its output, kill its process group at the time limit, and read what it reported."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

from scoreflow.sandbox.child import clipped

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
DRAIN_GRACE_S = 1.0               # after the process ends, wait this long for pipes to close


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    status: "ok" (exit 0), "error" (exception or non-zero exit; traceback in stderr),
    "timeout" (we killed it at timeout_s), "killed" (died from any other signal, e.g. a
    segfault or the CPU limit). `value` is str() of the `call` expression, None without one.
    `isolated` is True when the run had its own network, mount and PID namespaces and an
    unprivileged uid; False means part of that was unavailable (see the module docstring).
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


async def run_python_async(code: str, *, call: str | None = None, timeout_s: float = 10.0,
                           memory_mb: int = 1024, max_output_bytes: int = 64 * 1024,
                           audit_hook: bool = True) -> SandboxResult:
    """Run `code` as a module in a fresh sandboxed process; if `call` is given (e.g.
    "solve()"), evaluate it in the module's namespace afterwards and return str() of it.

    stdout, stderr and the value are each cut to `max_output_bytes` with a marker.
    `audit_hook=False` leaves out the in-process defence layer; it exists so tests can show
    the OS-level isolation holds on its own — keep it on in real use.
    """
    workdir = tempfile.mkdtemp(prefix="scoreflow_sandbox_")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with tempfile.TemporaryFile() as report:
            config = dict(workdir=workdir, report_fd=report.fileno(), call=call, timeout_s=timeout_s,
                          memory_mb=memory_mb, max_output_bytes=max_output_bytes, audit_hook=audit_hook)
            return await _supervise(config, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _supervise(config: dict, report) -> SandboxResult:
    limit = config["max_output_bytes"]
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-u", "-B", "-X", "utf8", CHILD, json.dumps(config),
        cwd=config["workdir"], env=_child_env(config["workdir"]), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, pass_fds=(config["report_fd"],))
    out, err = _Capture(limit), _Capture(limit)
    readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
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

    facts = _read_report(report, limit)
    if "setup_error" in facts:
        raise SandboxError(f"could not set up the sandbox: {facts['setup_error']}")
    if facts.get("isolated") is False:
        warnings.warn(f"sandbox runs with reduced isolation: {facts.get('note', 'unknown reason')}",
                      RuntimeWarning, stacklevel=2)
    code, stderr, value = proc.returncode, err.text(), facts.get("value")
    if timed_out:
        status = "timeout"
    elif code < 0:
        status = "killed"
    elif code != 0:
        status = "error"
    elif config["call"] is not None and value is None:
        status = "error"
        stderr += f"\n[sandbox: the program exited before `{config['call']}` returned]"
    else:
        status = "ok"
    return SandboxResult(status, out.text(), stderr, value, code, duration, facts.get("isolated", False))


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


def _read_report(report, limit: int) -> dict:
    """Facts the child wrote as JSON lines: setup facts first, then (from the program's own
    process, which can write anything there) only the value is believed."""
    report.seek(0)
    facts: dict = {}
    believed = {"setup_error", "isolated", "note"}
    for line in report.read(2 * limit + 4096).splitlines():  # value (<= limit + marker) + small facts
        try:
            fact = json.loads(line)
        except ValueError:
            continue
        if isinstance(fact, dict):
            facts.update((k, v) for k, v in fact.items() if k in believed)
            believed = {"value"} if "isolated" in fact else believed
    return facts
