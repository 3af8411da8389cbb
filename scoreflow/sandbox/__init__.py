"""Run untrusted generated Python in a separate, locked-down process.

The reference code `exec`s generated programs in-process behind a bypassable import
blocklist (SPEC Part C). Here every run is a fresh `python -I -S` process (no .pth file of the
host runs in it; child.py puts site-packages back on sys.path):

    parent (parent.py)                       child (child.py, run as a script)
    ------------------------------------     ---------------------------------------------
    temp dir, program.py, report file   -->  stage A, as the caller's user:
    new session (own process group)            unshare net + mount + PID namespaces
    stdout/stderr drained, capped              a new root (a tmpfs), read-only: the system
    wall-clock timeout -> SIGKILL group          library dirs, the interpreter's prefix
    temp dir removed                             (stdlib, site-packages) with any scoreflow
                                                 package dir hidden, a few /etc files and
                                                 /dev nodes; the work dir, a fresh tmpfs
                                               fork -> program process = PID 1 of the new
                                                 namespace (stage A waits and mirrors its end)
                                             program process:
                                               a fresh /proc of its PID namespace, chroot
                                                 into the new root
                                               rlimits (AS, CPU, NPROC, FSIZE, NOFILE, CORE=0)
                                               drop to nobody, no_new_privs, parent-death kill
                                               audit hook (defence in depth), exec the program

Real isolation is the process, the uid, the rlimits and the namespaces: no network (the new
network namespace has only a downed loopback), nothing of the project, the benchmark data,
run directories, home or cache directories to read (they are not in the new root), no
writes outside the work dir, no other processes to see (the /proc is the namespace's own),
nothing outlives the run (when PID 1 of a namespace dies the kernel kills the rest, setsid
or not), no signals to other sandboxes (they live in other PID namespaces).

Fallbacks, reported in `SandboxResult.isolated` and warned about once:
- not root: unshare(user + net) only; the program keeps the caller's uid and files and no
  RLIMIT_NPROC is set (it would count every process of that user).
- unshare refused (a container's seccomp, or unprivileged user namespaces disabled): no
  namespaces at all; sockets and writes outside the work dir are then blocked by the audit
  hook alone, and leftovers are killed through the process group only.

Known limits: the program is PID 1 of its namespace, so signals it sends *itself* with the
default action (os.kill(os.getpid(), SIGTERM), raise(SIGSEGV)) are ignored by the kernel;
exceptions, real faults, rlimits and the timeout still end it. RLIMIT_AS is per process: a
program that forks (possible only past the audit hook) can use up to MAX_PROCESSES times
memory_mb; a cgroup would bound the total but is not available everywhere.
"""

from scoreflow.sandbox.child import MAX_PROCESSES
from scoreflow.sandbox.parent import SandboxError, SandboxResult, run_python, run_python_async

__all__ = ["MAX_PROCESSES", "SandboxError", "SandboxResult", "run_python", "run_python_async"]
