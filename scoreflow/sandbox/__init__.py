"""Run untrusted generated Python in a separate, locked-down process.

The reference implementation `exec`s generated programs in its own process behind an import
blocklist that is easy to get around. Here every run is a fresh `python -I -S` process (no
.pth file of the host runs in it; child.py puts site-packages back on sys.path):

    parent (parent.py)                       child (child.py, run as a script)
    ------------------------------------     ---------------------------------------------
    a share of the memory budget (budget.py) stage A, as the caller's user:
    temp dir, program.py, two pipes:  -->      unshare net + mount + PID + IPC namespaces
      set-up facts, report (value/nonce)       a new root (a tmpfs), read-only: the system
    stdin: a checks run's nonce + checks         library dirs, the interpreter's prefix
    new session (own process group)              (stdlib, site-packages) with any scoreflow
    stdout/stderr/report drained, capped         package dir hidden, a few /etc files and
    wall-clock timeout -> SIGKILL group          /dev nodes; the work dir, a fresh tmpfs
    temp dir removed                           fork -> program process = PID 1 of the new
                                                 namespace (stage A waits and mirrors its end)
                                             program process:
                                               a fresh /proc of its PID namespace, chroot
                                                 into the new root
                                               rlimits (AS, CPU, NPROC, FSIZE, NOFILE, CORE=0)
                                               drop to nobody, no_new_privs, parent-death kill
                                               set-up facts written, that pipe closed
                                               audit hook (defence in depth), exec the program
                                               (a checks run: then the checks, then the nonce)

Real isolation is the process, the uid, the rlimits and the namespaces: no network (the new
network namespace has only a downed loopback), nothing of the project, the benchmark data,
run directories, home or cache directories to read (they are not in the new root), no
writes outside the work dir, no other processes to see (the /proc is the namespace's own),
nothing outlives the run (when PID 1 of a namespace dies the kernel kills the rest, setsid
or not; SysV shared memory, semaphores and message queues live in the run's own IPC
namespace and go with it), no signals to other sandboxes (they live in other PID
namespaces), and no channel to them or to later runs.

What the parent believes. The set-up facts (isolated, note, setup_error) come on a pipe the
child writes before any program code runs and then closes, so nothing a program writes
becomes a fact or a warning. The report pipe stays open in the program's process, which
can write anything there: only the value of `call` is read from it (the program's own
answer anyway), and for a run with checks, whether it carries exactly this run's nonce.

A run with checks (`checks=`: a task's tests, trusted code) passes only on proof. The
parent makes a fresh nonce (secrets.token_hex) per run and writes it, then the checks, to
the child's stdin; neither is ever in program.py (the program can read its own file), the
argv, the environment or any file the program sees. Before any program code runs, child.py
reads and compiles them into two generators that exist only on its runner's value stack —
no variable of any frame refers to them, so walking frames (sys._getframe().f_back...
.f_locals) finds neither. It then runs the program, then the checks in the program's
namespace, and only when both returned without any exception (SystemExit, os._exit, a
BaseException subclass all fail) asks the nonce generator for more, which writes the
nonce. The generator holding the nonce is not resumed in between, so no signal handler or
finalizer of the program can run with its frame on the stack. `exec` and `os.write` are
bound before the program runs: rebinding builtins or os attributes changes nothing.
Printing "passed" or anything else, or writing to the report pipe, proves nothing.

Limits of that proof. The program and the checks share one interpreter, so it holds only as
far as the program cannot read the runner's memory. The audit hook refuses the ways to
objects that no frame's names lead to — gc.get_objects/get_referrers/get_referents (which
would reach the generators), ctypes, sys._current_frames, trace and profile functions,
further audit hooks — and its own state is bound in a closure; /proc/self/mem is closed to
uid nobody. That makes a forged pass hard, not impossible: with `audit_hook=False`, or in
the fallbacks below (the caller's uid can read the parent's memory), deliberate
introspection can find the nonce. The checks themselves are reachable once handed over (the
function under test can inspect the frames that call it), and the proof says every check
ran to its end, not that the answer was honest with them: an answer that returns an object
equal to everything, or rebinds names the checks use, is not caught here.

Memory: RLIMIT_AS bounds each process, and budget.py bounds the sum: concurrent runs of the
whole process take their `memory_mb` from one budget (half the physical memory by default)
and the rest wait.

Fallbacks, reported in `SandboxResult.isolated` and warned about once:
- not root: unshare(user + net + IPC) only; the program keeps the caller's uid and files and
  no RLIMIT_NPROC is set (it would count every process of that user).
- unshare refused (a container's seccomp, or unprivileged user namespaces disabled): no
  namespaces at all; sockets and writes outside the work dir are then blocked by the audit
  hook alone, and leftovers are killed through the process group only.

Known limits: the program is PID 1 of its namespace, so signals it sends *itself* with the
default action (os.kill(os.getpid(), SIGTERM), raise(SIGSEGV)) are ignored by the kernel;
exceptions, real faults, rlimits and the timeout still end it. RLIMIT_AS is per process: a
program that forks (possible only past the audit hook) can use up to MAX_PROCESSES times
memory_mb; a cgroup would bound the total but is not available everywhere.
"""

from scoreflow.sandbox.budget import PROCESS_BUDGET, MemoryBudget
from scoreflow.sandbox.child import MAX_PROCESSES
from scoreflow.sandbox.parent import SandboxError, SandboxResult, run_python, run_python_async

__all__ = ["MAX_PROCESSES", "PROCESS_BUDGET", "MemoryBudget", "SandboxError", "SandboxResult", "run_python",
           "run_python_async"]
