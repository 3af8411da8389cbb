"""The sandbox contains hostile generated code: each attack is checked by its real effect
(a file that must not appear, a connection the listener must not see, processes that must
be gone), once with the audit hook and once with the OS-level isolation alone."""

import ast
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

import scoreflow
from scoreflow.sandbox import MAX_PROCESSES, run_python, run_python_async


@pytest.fixture(scope="module")
def os_isolated() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_python("pass").isolated


@pytest.fixture(params=[True, False], ids=["audit_hook", "os_isolation_only"])
def audit_hook(request, os_isolated) -> bool:
    if not request.param and not os_isolated:
        pytest.skip("no namespaces on this machine: the audit hook is the only barrier here")
    return request.param


@pytest.fixture
def marker():
    path = f"/tmp/scoreflow_escape_{uuid.uuid4().hex}"
    yield path
    if os.path.exists(path):
        os.remove(path)


def working_dirs() -> dict[int, str]:
    """Host pid -> current directory of every process (how we find a run's processes)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[int(entry)] = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
    return found


def pids_with_cwd(path: str) -> list[int]:
    return [pid for pid, cwd in working_dirs().items() if cwd == path]


ATTACKS = {
    "os.system": "import os; os.system('touch {m}')",
    "subprocess": "import subprocess; subprocess.run(['touch', '{m}'])",
    "__import__": "__import__('os').system('touch {m}')",
    "importlib": "import importlib; importlib.import_module('subprocess').run(['touch', '{m}'])",
    "ctypes": "import ctypes; ctypes.CDLL(None).system(b'touch {m}')",
    "open": "open('{m}', 'w').write('escaped')",
}


def test_value_comes_back_apart_from_stdout():
    result = run_python("print('chatter')\ndef solve():\n    return 6 * 7\n", call="solve()")
    assert (result.status, result.value, result.stdout, result.returncode) == ("ok", "42", "chatter\n", 0)
    assert 0 < result.duration_s < 10


def test_exception_is_an_error_with_the_traceback():
    result = run_python("x = 1\n\ndef solve():\n    return x / 0\n", call="solve()")
    assert result.status == "error" and result.returncode == 1 and result.value is None
    assert "ZeroDivisionError" in result.stderr and "line 4, in solve" in result.stderr
    assert "return x / 0" in result.stderr  # source lines: the program file is readable there


def test_exiting_before_the_call_is_an_error():
    result = run_python("import sys\nsys.exit(0)\ndef solve():\n    return 1\n", call="solve()")
    assert result.status == "error" and "exited before `solve()` returned" in result.stderr


def test_checks_run_after_the_program_in_its_namespace():
    passed = run_python("def double(x):\n    return 2 * x\n", checks="assert double(3) == 6\nprint('checked')")
    assert (passed.status, passed.stdout, passed.value) == ("ok", "checked\n", None), passed.stderr
    failed = run_python("def double(x):\n    return x\n", checks="x = 3\nassert double(x) == 6\n")
    assert (failed.status, failed.returncode) == ("error", 1)
    assert 'File "<checks>", line 2' in failed.stderr and "assert double(x) == 6" in failed.stderr
    with pytest.raises(ValueError, match="not both"):
        run_python("pass", call="1", checks="pass")


def test_numpy_is_importable_for_generated_programs():
    result = run_python("import numpy as np\ndef solve():\n    return int(np.arange(5).sum())", call="solve()")
    assert (result.status, result.value) == ("ok", "10"), result.stderr


@pytest.mark.parametrize("builtin", ["exit", "quit"])
def test_exit_and_quit_work_though_site_does_not_run(builtin):
    result = run_python(f"print('bye')\n{builtin}(3)\nprint('not reached')\n")
    assert (result.status, result.returncode, result.stdout) == ("error", 3, "bye\n"), result.stderr


def test_secrets_in_the_environment_do_not_leak(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = run_python("import os\ndef solve():\n    return sorted(os.environ)", call="solve()")
    assert result.status == "ok" and "OPENAI_API_KEY" not in result.value


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_do_write_outside_a_sandbox(attack, marker):
    """Control: unsandboxed, each attack really creates the marker, so the test below can fail."""
    subprocess.run([sys.executable, "-c", ATTACKS[attack].format(m=marker)], check=True, timeout=30)
    assert os.path.exists(marker)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_cannot_write_outside_the_work_dir(attack, marker, audit_hook):
    result = run_python(ATTACKS[attack].format(m=marker), audit_hook=audit_hook)
    assert not os.path.exists(marker), result
    if audit_hook:
        assert result.status == "error" and "sandbox: " in result.stderr, result


def test_programs_see_neither_the_project_nor_other_processes(audit_hook, os_isolated):
    """No route to the gold answers and hidden tests (benchmark data in the package, this
    tests/ dir), run directories, home or cache: only the interpreter, system libraries and
    the work dir are there. /proc is the program's own PID namespace's."""
    if not os_isolated:
        pytest.skip("no namespaces on this machine: programs see the caller's files")
    package = Path(scoreflow.__file__).resolve().parent
    secrets = [package / "sandbox" / "child.py", Path(__file__).resolve(), Path.cwd(), Path.home() / ".cache",
               *sorted((package / "data").glob("*/*.json*"))[:1]]
    assert all(os.access(p, os.R_OK) and p.stat().st_mode & 0o004 for p in secrets)  # control: readable here
    code = f"""
import os
def solve():
    seen = []
    for path in {[str(p) for p in secrets]!r}:
        try:
            os.listdir(path) if os.path.isdir(path) else open(path).read(1)
            seen.append(path)
        except OSError:
            pass
    return sorted(p for p in os.listdir("/proc") if p.isdigit()), seen
"""
    result = run_python(code, call="solve()", audit_hook=audit_hook)
    assert result.status == "ok", result.stderr
    assert ast.literal_eval(result.value) == (["1"], [])
    assert len([p for p in os.listdir("/proc") if p.isdigit()]) > 1  # control: the host's /proc shows more


def test_network_is_unreachable_even_on_loopback(audit_hook):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                            audit_hook=audit_hook)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # a connection, even unaccepted, would be waiting here
        assert result.status == "error"
        assert ("sandbox: socket" if audit_hook else "Network is unreachable") in result.stderr
        with socket.create_connection(("127.0.0.1", port)):  # control: the listener sees one from us
            listener.accept()[0].close()


def test_fork_bomb_is_bounded_and_leaves_nothing_behind(audit_hook):
    assert os.getpid() in pids_with_cwd(os.getcwd())  # control: the scan finds live processes
    bomb = """
import os, time
print(os.getcwd(), flush=True)
forked = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.setsid()  # try to leave the process group
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked)
"""
    result = run_python(bomb, audit_hook=audit_hook, timeout_s=20)
    workdir, forked = result.stdout.split()
    assert result.status == "ok", result
    assert int(forked) == 0 if audit_hook else 0 < int(forked) < MAX_PROCESSES
    assert pids_with_cwd(workdir) == []
    assert not os.path.exists(workdir)


def test_memory_bomb_is_contained():
    result = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))", memory_mb=256)
    assert result.status in ("error", "killed")
    assert result.status == "killed" or "MemoryError" in result.stderr
    assert result.duration_s < 10


def test_infinite_loop_times_out_and_its_processes_are_gone():
    result = run_python("import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass", timeout_s=2)
    assert result.status == "timeout" and result.returncode == -9
    assert 2 <= result.duration_s < 6
    workdir = result.stdout.strip()
    assert "scoreflow_sandbox_" in workdir and pids_with_cwd(workdir) == []


def test_a_crash_is_reported_as_killed():
    crash = "import sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**6):\n    x = [x]\nrepr(x)"
    result = run_python(crash)  # overflows the C stack: SIGSEGV
    assert (result.status, result.returncode) == ("killed", -11)


def test_death_by_an_outside_signal_is_killed():
    """As if the OOM killer struck: SIGKILL to the program process, not from our timeout."""
    token = uuid.uuid4().hex
    code = f"import os, time\nos.mkdir('{token}')\nos.chdir('{token}')\ntime.sleep(30)"

    async def main():
        run = asyncio.create_task(run_python_async(code, timeout_s=20))
        while not (pids := [pid for pid, cwd in working_dirs().items() if cwd.endswith(token)]) and not run.done():
            await asyncio.sleep(0.02)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return await run

    result = asyncio.run(main())
    assert (result.status, result.returncode) == ("killed", -9) and result.duration_s < 10


def test_without_namespaces_the_audit_hook_still_blocks(marker):
    """Degraded mode: in a user namespace without a uid mapping unshare(2) is refused, as in
    many containers; the run must say so, warn, and still refuse sockets and outside writes."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        script = f"""
import json, sys, warnings
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from scoreflow.sandbox import run_python
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    net = run_python("import socket; socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=2)")
    disk = run_python("open({marker!r}, 'w').write('x')")
warned = [str(w.message) for w in caught]
print(json.dumps(dict(isolated=net.isolated, net=net.stderr, disk=disk.stderr, warned=warned)))
"""
        proc = subprocess.run(["unshare", "--user", sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0 and proc.stderr.startswith("unshare"):
            pytest.skip(f"cannot create a user namespace here: {proc.stderr.strip()}")
        facts = json.loads(proc.stdout)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert facts["isolated"] is False and "unshare refused" in facts["warned"][0]
    assert "sandbox: socket" in facts["net"] and "outside the work dir" in facts["disk"]
    assert not os.path.exists(marker)


def test_huge_output_and_value_are_truncated():
    code = "import sys\nprint('x' * 10**7)\nsys.stderr.write('e' * 10**6)\ndef solve():\n    return 'v' * 10**6"
    result = run_python(code, call="solve()", max_output_bytes=1000)
    assert result.status == "ok"
    for text, dropped in ((result.stdout, 10**7 + 1 - 1000), (result.stderr, 10**6 - 1000),
                          (result.value, 10**6 - 1000)):
        assert text.endswith(f"[sandbox: {dropped} more bytes truncated]") and len(text) < 1100


def test_concurrent_async_runs_are_independent():
    async def main():
        code = "import os\ndef solve():\n    return os.getcwd() + ' {}'"
        return await asyncio.gather(*(run_python_async(code.format(i), call="solve()") for i in range(6)))

    results = asyncio.run(main())
    assert [r.value.split()[1] for r in results] == [str(i) for i in range(6)]
    assert len({r.value.split()[0] for r in results}) == 6  # one fresh work dir each
