"""The child side of the sandbox (see __init__.py), run as `python -I -S child.py CONFIG`: it
imports the standard library only. Stage A enters the namespaces and builds the new root;
the program process (PID 1 of the new PID namespace) drops privileges, sets the rlimits,
reports the set-up facts and closes that pipe, sets the audit hook, and execs the program
(then, for a run with checks, the checks and the nonce). The kernel calls (libc, mount,
unshare) are also what the workflow worker uses to lock itself down (workflow/worker.py)."""

from __future__ import annotations

import ctypes
import json
import linecache
import math
import os
import resource
import signal
import sys
import sysconfig
import tempfile
import traceback
import types
from collections.abc import Iterator, Sequence
from typing import Any

NOBODY = 65534                    # uid/gid the program runs as when we start as root
MAX_PROCESSES = 64                # RLIMIT_NPROC for uid nobody (shared by concurrent runs)
MAX_OPEN_FILES = 64
MAX_FILE_BYTES = 32 << 20         # RLIMIT_FSIZE: one file written by the program
WORKDIR_TMPFS = "size=64m,nr_inodes=4096"   # bounds the work dir in total, not per file
# What a program sees besides the interpreter's own directories (sys.prefix, ...) and its
# work dir: system libraries and tools, and the few files the C library and Python read.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
                "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

# linux/sched.h, linux/mount.h, linux/prctl.h
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

REPORTED = b"="                   # starts what the runner writes on the report pipe: a value of '' is not none
CHECKS_FILE = "<checks>"          # the checks' file name in tracebacks (they are in no file the program sees)


def _child_main(config: dict) -> None:
    facts_fd, workdir = config["facts_fd"], config["workdir"]
    root = os.geteuid() == 0
    with open(os.path.join(workdir, "program.py"), encoding="utf-8") as f:
        source = f.read()
    try:
        refused = unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC if root
                          else CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC)
        isolated = root and refused is None
        if isolated:
            new_root = _build_root(workdir, source)
            _become_pid_namespace_parent()
            _enter_root(new_root, workdir)
        elif root:
            _require_reachable_interpreter()
            os.chown(workdir, NOBODY, NOBODY)
        _apply_limits(config, root)
        if root:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if isolated:  # a setsid() escapee still dies with stage A (set after setuid, which clears it)
            libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError as e:
        _report(facts_fd, setup_error=f"{e} (running as uid {os.geteuid()})")
        os._exit(1)
    _report(facts_fd, isolated=isolated, note=refused or "not root: own network and IPC namespaces only, caller's uid")
    os.close(facts_fd)  # before any program code: nothing a program writes can become a fact
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-long writes raise OSError instead
    _site_without_pth()
    if config["audit_hook"]:
        _install_audit_hook(workdir)
    (_run_checked if config["checks"] else _run_program)(config, source)


def _site_without_pth() -> None:
    """What `site` gives a program, without running the host's .pth files (which execute code,
    and cost time on every run: bench/RESULTS.md, "Program sandbox"): installed packages on
    sys.path, and the exit()/quit() builtins."""
    import site  # under -S this does not run site.main()

    for path in dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib")):
        if path not in sys.path:
            sys.path.append(path)
    site.setquit()


def libc(name: str, *args: Any) -> None:
    """Call a libc function that returns 0 on success; OSError otherwise."""
    if getattr(ctypes.CDLL(None, use_errno=True), name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}() failed: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    paths = (None if s is None else os.fsencode(s) for s in (source, target, fstype))
    libc("mount", *paths, ctypes.c_ulong(flags), data and data.encode())


def unshare(flags: int) -> str | None:
    """Enter new namespaces; returns None on success, else why not (we then fall back)."""
    try:
        libc("unshare", flags)
        return None
    except OSError as e:
        return f"unshare refused ({e}): no network/mount/PID/IPC namespaces, audit hook only"


def enter_empty_root() -> None:
    """For a process that has already imported all it needs (the workflow worker's
    template): after unshare(CLONE_NEWNS), make its root an empty read-only tmpfs."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
    empty = tempfile.gettempdir()  # any existing directory: the mount is private to us
    mount("tmpfs", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    os.chroot(empty)
    os.chdir("/")


def _build_root(workdir: str, source: str) -> str:
    """Inside our private mount namespace: a new root holding only what a program needs,
    read-only (system libraries, the interpreter with its stdlib and site-packages minus
    scoreflow, a few /etc files and devices), plus the work dir, a fresh size-capped tmpfs
    at its usual path. Returns the new root's path; _enter_root switches to it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
    new_root = os.path.join(workdir, "root")
    os.mkdir(new_root)
    mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    visible = _outermost([*SYSTEM_DIRS, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix])
    for path in (*visible, *SYSTEM_FILES):
        _bind_read_only(path, new_root + path)
    for path in _our_package_dirs():
        if os.path.isdir(path) and any(path.startswith(v + os.sep) for v in visible):
            mount("tmpfs", new_root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    inside = new_root + workdir
    os.makedirs(inside)
    os.makedirs(os.path.join(new_root, "proc"))
    mount("tmpfs", inside, "tmpfs", MS_NOSUID | MS_NODEV, f"{WORKDIR_TMPFS},mode=0700,uid={NOBODY},gid={NOBODY}")
    with open(os.path.join(inside, "program.py"), "w", encoding="utf-8") as f:  # for tracebacks with source lines
        f.write(source)
    mount(None, new_root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return new_root


def _bind_read_only(path: str, target: str) -> None:
    """Make `path` (a directory, file or device; not the mounts below it) appear read-only
    at `target`; a symlink (merged /usr: /bin -> usr/bin) is copied as a symlink."""
    if not os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "w").close()
    mount(path, target, None, MS_BIND)
    kept = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ST_* flags have the MS_* values
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _our_package_dirs() -> set[str]:
    """Where scoreflow (with its benchmark data and gold answers) may be installed."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {package, *(os.path.join(sysconfig.get_path(kind), "scoreflow") for kind in ("purelib", "platlib"))}


def _outermost(paths: list[str]) -> list[str]:
    real = {os.path.abspath(p) for p in paths if p and os.path.abspath(p) != "/"}
    return sorted(d for d in real if not any(d.startswith(other + os.sep) for other in real))


def _enter_root(new_root: str, workdir: str) -> None:
    """In the program process, PID 1 of the new PID namespace: a /proc of that namespace
    only, then the new root (the program runs as uid nobody, which cannot leave a chroot)."""
    mount("proc", os.path.join(new_root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(new_root)
    os.chdir(workdir)


def _require_reachable_interpreter() -> None:
    for path in _interpreter_dirs():
        if (closed := _first_closed_ancestor(path)) is not None:
            raise PermissionError(
                f"uid {NOBODY} cannot reach the Python installation at {path} ({closed} is closed to others) "
                f"and without namespaces it cannot be bound elsewhere; install Python where others can read "
                f"it (e.g. /usr/local) or allow unshare(2) here")


def _interpreter_dirs() -> list[str]:
    """The outermost directories the interpreter imports from."""
    return _outermost([sys.prefix, sys.base_prefix, sys.exec_prefix, *(p for p in sys.path if os.path.isdir(p))])


def _first_closed_ancestor(path: str) -> str | None:
    """The outermost directory on `path` that others may not traverse (no o+x bit)."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _become_pid_namespace_parent() -> None:
    """Fork the program process: it is PID 1 of the new PID namespace, so when it ends the
    kernel kills whatever it left behind. This process (outside the namespace) waits and
    then ends the same way, so the parent sees one exit status."""
    pid = os.fork()
    if pid == 0:
        return
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if -code != signal.SIGKILL:  # the only one that cannot (and need not) be reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def _apply_limits(config: dict, root: bool) -> None:
    cpu_s = math.ceil(config["timeout_s"]) + 1  # backstop only: the wall clock ends runs first
    memory = config["memory_mb"] << 20
    limits = {resource.RLIMIT_AS: (memory, memory), resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
              resource.RLIMIT_FSIZE: (MAX_FILE_BYTES,) * 2, resource.RLIMIT_NOFILE: (MAX_OPEN_FILES,) * 2,
              resource.RLIMIT_CORE: (0, 0)}
    if root:  # counts processes per uid: only meaningful for our own unprivileged uid
        limits[resource.RLIMIT_NPROC] = (MAX_PROCESSES, MAX_PROCESSES)
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


_FORBIDDEN_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "socket.__new__", "socket.connect", "socket.bind",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.string_at", "ctypes.addressof",
    # what reaches objects no frame's names lead to (the runner's generators, the hook itself)
    # or runs code inside the runner's frames; no stdlib module a program would use needs them
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "sys.settrace", "sys.setprofile", "sys.addaudithook",
})
_PATH_EVENTS = types.MappingProxyType({"open": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
                                       "os.rename": (0, 1), "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,),
                                       "os.chown": (0,), "os.truncate": (0,)})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _install_audit_hook(workdir: str) -> None:
    """Defence in depth (PEP 578): refuse process creation, sockets, ctypes, the introspection
    listed in _FORBIDDEN_EVENTS and file changes outside the work dir, whichever way the
    program reached them (__import__, importlib, ...). What the hook consults is bound here,
    in its closure, not looked up in this module's globals, which any frame's f_globals
    reaches: rebinding them changes nothing. The path checks can still be fooled from inside
    (os.path.realpath looks up os functions a program can replace), so the OS isolation does
    not rely on this; the in-process secrecy of a checks run's nonce does (see __init__.py)."""
    root = os.path.realpath(workdir) + os.sep
    forbidden, path_events, write_flags = _FORBIDDEN_EVENTS, _PATH_EVENTS, _WRITE_FLAGS
    realpath, fsdecode, is_path, path_types = os.path.realpath, os.fsdecode, isinstance, (str, bytes, os.PathLike)
    sep, devnull = os.sep, os.devnull

    def outside(path: Any) -> bool:
        if not is_path(path, path_types):
            return False  # a file descriptor: already open
        real = realpath(fsdecode(path))
        return not (real + sep).startswith(root) and real != devnull

    def hook(event: str, args: tuple) -> None:
        if event in forbidden:
            raise PermissionError(f"sandbox: {event} is not allowed in generated code")
        if event in path_events and not (event == "open" and not (args[2] or 0) & write_flags):
            for i in path_events[event]:
                if outside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the work dir is not allowed: {args[i]!r}")

    sys.addaudithook(hook)


def _run_program(config: dict, source: str) -> None:
    """Exec the program as a fresh __main__ module; report str(call) on the report pipe."""
    namespace = _main_namespace()
    try:
        exec(compile(source, _program_path(config), "exec"), namespace)
        if config["call"] is None:
            return
        value = str(eval(compile(config["call"], "<call>", "eval"), namespace)).encode()
    except Exception as e:  # noqa: BLE001 - any program error is reported, not ours
        _print_traceback(e)
        sys.exit(1)
    _write_all(config["report_fd"], REPORTED + value)  # the parent cuts it to max_output_bytes


def _run_checked(config: dict, source: str) -> None:
    """A run with checks (see __init__.py): the program, then the checks in its namespace,
    then the nonce on the report pipe, only if neither raised anything (SystemExit too).

    Both generators read their secret from stdin before the program runs and live only on
    this frame's value stack: no name in any frame leads to them. `exec` is bound before the
    program runs, which may rebind any builtin or module attribute."""
    run, namespace, lines = exec, _main_namespace(), []
    try:
        program = compile(source, _program_path(config), "exec")
        for _ in _proof(config["report_fd"]):
            for code, lines in _program_then_checks(program):
                run(code, namespace)
    except BaseException as e:  # noqa: BLE001 - an exit or exception of the program fails the checks
        linecache.cache[CHECKS_FILE] = (0, None, lines, CHECKS_FILE)  # for the traceback, now that they are over
        _print_traceback(e)
        sys.exit(1)


def _proof(report_fd: int) -> Iterator[None]:
    """Reads the nonce (the first line of stdin) when the loop over it starts, and writes it
    when that loop asks for a second item: after its body ran without an exception. Never
    resumed in between, so nothing the program runs meanwhile (a signal handler, a finalizer)
    can find this frame on the stack."""
    write, report = os.write, REPORTED + sys.stdin.buffer.readline().rstrip(b"\n")
    yield
    write(report_fd, report)


def _program_then_checks(program: types.CodeType) -> Iterator[tuple[types.CodeType, Sequence[str]]]:
    """The program's code, then the checks' code and source lines (the rest of stdin, read and
    compiled before the program runs, since it may rebind `compile`)."""
    source = sys.stdin.buffer.read().decode()
    checks, lines = compile(source, CHECKS_FILE, "exec"), source.splitlines(True)
    yield program, []
    yield checks, lines


def _main_namespace() -> dict[str, Any]:
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    return module.__dict__


def _program_path(config: dict) -> str:
    return os.path.join(config["workdir"], "program.py")


def _print_traceback(error: BaseException) -> None:
    traceback.print_exception(type(error), error, error.__traceback__.tb_next)  # without the runner's frame


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a signal can cut a large write to a pipe short
        view = view[os.write(fd, view):]


def _report(fd: int, **facts: Any) -> None:
    os.write(fd, json.dumps(facts, ensure_ascii=False).encode() + b"\n")


def clipped(kept: bytes, total: int) -> str:
    text = kept.decode("utf-8", "replace")
    return text if total <= len(kept) else f"{text}\n[sandbox: {total - len(kept)} more bytes truncated]"


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
