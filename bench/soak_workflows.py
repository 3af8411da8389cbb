"""Soak the isolated workflow runtime: the embedded executor (SmolLM2-135M served by scoreflow
in this process, as `scoreflow.train` runs it), a fixed mix of well-behaved and hostile
workflows, 16 in flight at all times, and report what a long run would show.

    python bench/soak_workflows.py --minutes 30     # the soak in RESULTS.md, "Workflow soak"
    python bench/soak_workflows.py --minutes 2      # a quick validation run

Workflows, taken in a fixed rotation (MIX): the template, the CoT baseline and a gathered
ensemble (these call the model), and attacks: a C-stack overflow (SIGSEGV), a multiplication
that takes hours, a self-feeding iterator, a 3 GB string, a growing list of strings, an
uncountable loop, values that cannot be printed, rebinding `self`, operator calls in flight
while the worker blocks, a 10 MB exception that asyncio logs in the worker, a 10,000-call
gather, requests of millions of elements, and calls abandoned while the model works on them
(issue #27). Each has the statuses it may end with.

Every 5 s: this process's RSS and open file descriptors, the worker template's pid and RSS,
and how many workers it has. Exit status 1 when a run was lost (started, never returned) or
raised, a run ended with a status outside its expected set, the template was restarted, the
worker count passed isolation.MAX_WORKERS + worker.SPARES, or this process's RSS or
descriptor count grew by more than 10% (RSS) or 8 (fds) from the end of the first quarter
(after warm-up) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from scoreflow.executor import ExecutorClient
from scoreflow.llama.registry import DEFAULT_MODEL
from scoreflow.optimize.endpoint import executor_endpoint
from scoreflow.workflow.static_baselines import baseline_workflow
from scoreflow.workflow.isolation import MAX_WORKERS
from scoreflow.workflow.prompts import template_workflow, workflow_source
from scoreflow.workflow.runtime import run_workflow
from scoreflow.workflow.worker import SPARES

PROBLEM = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
          "How many clips did Natalia sell altogether in April and May?"
DEEP = "t = ()\nfor i in range(9):\n    for j in range(10000):\n        t = ((((((((((t,),),),),),),),),),)\n"
BIG = "x = 10\nfor i in range(13):\n    x = x * x\n"
# scoreflow's gather stops at this future's cancel(), leaving boom() unawaited: asyncio then logs
# its exception, 10 MB of it, in the worker
FAKE_FUTURE = ("class Fake:\n    _asyncio_future_blocking = False\n\n"
               "    def cancel(self, msg=None):\n        raise ValueError('cancel refused')\n\n"
               "    def get_loop(self):\n        raise ValueError('no loop')\n\n\n")
BOOM = "async def boom(self):\n    raise ValueError('\\x1b[2J\\n' + 'b' * 10000000)"


@dataclass(frozen=True)
class Job:
    name: str
    code: str
    expected: tuple[str, ...]
    timeout_s: float = 600.0  # the model answers slowly with 16 runs in flight on 2 cores: only starvation times out


def math(body: str, methods: str = "") -> str:
    return workflow_source("math", body, methods)


MIX = [
    Job("template", template_workflow("math"), ("ok", "empty")),
    Job("cot", baseline_workflow("cot", "math"), ("ok", "empty")),
    Job("ensemble", math('rs = await asyncio.gather(*[self.custom(instruction="Solve it, attempt " + str(i)) '
                         'for i in range(3)])\nbest = await self.sc_ensemble(solutions=rs)\nreturn best["response"]'),
        ("ok", "empty")),
    Job("segfault", math(DEEP + "d = {t: 1}\nreturn 'x'"), ("error",)),
    Job("template", template_workflow("math"), ("ok", "empty")),
    Job("huge multiply", math("x = 7\nfor i in range(40):\n    x = x * x\nreturn 'x'"), ("timeout",), 5.0),
    Job("self-feeding map", math("l = [0]\nany(map(l.append, l))\nreturn 'x'"), ("timeout", "error"), 5.0),
    Job("cot", baseline_workflow("cot", "math"), ("ok", "empty")),
    Job("3 GB string", math('s = "x" * 3000000000\nreturn s[:1]'), ("error",)),
    Job("growing list", math('held = []\nwhile True:\n    held.append("y" * 10000000)'), ("error", "timeout"), 30.0),
    Job("endless loop", math("while True:\n    x = 1"), ("timeout",)),
    Job("unprintable", math('d = {}\nd["response"] = d\nreturn d'), ("error",)),
    Job("5000-digit raise", math(BIG + "raise ValueError(x)"), ("error",)),
    Job("rebind self", math("self = operator.Custom\nself.name = 'x'\nreturn 'x'"), ("invalid",)),
    Job("calls then block", math('p = await asyncio.gather(self.custom(instruction="a"), self.block())\nreturn p[0]',
                                 "async def block(self):\n    x = 7\n    for i in range(40):\n        x = x * x"),
        ("timeout",), 10.0),
    Job("two calls", math('rs = await asyncio.gather(*[self.custom(instruction="Try " + str(i)) for i in range(2)])'
                          "\nreturn rs"), ("ok", "empty")),
    Job("asyncio log flood", FAKE_FUTURE + math("try:\n    await asyncio.gather(Fake(), self.boom())\n"
                                                "except ValueError as e:\n    pass\nreturn 'x'", BOOM),
        ("ok", "empty")),
    # single-solution ensembles need no model call: the call budget ends it
    Job("10,000-call gather", math('rs = await asyncio.gather(*[self.sc_ensemble(solutions=["same"]) '
                                   "for i in range(10000)])\nreturn 'x'"), ("error",)),
    # refused in the worker, then 200,000 solutions (refused by ScEnsemble in the host) until 16 MiB
    Job("huge requests", math('huge = [""] * 2000000\nfor i in range(10):\n    try:\n'
                              "        await self.custom(instruction=huge)\n    except ValueError as e:\n        pass\n"
                              'large = [""] * 200000\nwhile True:\n    try:\n'
                              "        await asyncio.gather(*[self.sc_ensemble(solutions=large) for j in range(4)])\n"
                              "    except ValueError as e:\n        pass"), ("error",)),
    Job("abandoned calls", math('try:\n    await asyncio.gather(*[self.custom(instruction="Solve it, " + str(i)) '
                                "for i in range(8)], self.sc_ensemble(solutions=[]))\n"
                                "except ValueError as e:\n    pass\n"
                                'r = await self.custom(instruction="Solve it.")\nreturn r["response"]'),
        ("ok", "empty")),
]


@dataclass
class Tally:
    started: int = 0
    returned: int = 0
    raised: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # (job name, status) -> runs
    unexpected: list[str] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)


async def soak(url: str, minutes: float, concurrency: int, max_tokens: int, tally: Tally) -> None:
    rotation, stop_at = itertools.cycle(MIX), time.monotonic() + 60 * minutes
    async with ExecutorClient(url, DEFAULT_MODEL, default_max_tokens=max_tokens, max_concurrency=8) as executor:

        async def lane() -> None:
            while time.monotonic() < stop_at:
                job = next(rotation)
                tally.started += 1
                start = time.monotonic()
                try:
                    result = await run_workflow(job.code, PROBLEM, executor, "math", job.timeout_s)
                except Exception as e:  # noqa: BLE001 - the point of the soak: there must be none
                    tally.raised.append(f"{job.name}: {type(e).__name__}: {e}")
                    continue
                tally.returned += 1
                tally.statuses[job.name, result.status] += 1
                tally.seconds.setdefault(job.name, []).append(time.monotonic() - start)
                if result.status not in job.expected:
                    tally.unexpected.append(f"{job.name}: {result.status} ({result.error})")

        await asyncio.gather(*(lane() for _ in range(concurrency)))


def sample(samples: list[dict], stop: threading.Event) -> None:
    """Every 5 s until `stop`: (host RSS, host fds, template pid and RSS, its workers)."""
    while not stop.wait(5.0):
        children = _children()
        template = next((p for p in children.get(os.getpid(), []) if b"scoreflow.workflow.worker" in _cmdline(p)), None)
        samples.append({"t": time.monotonic(), "rss_mb": _rss_mb("self"), "fds": len(os.listdir("/proc/self/fd")),
                        "template": template, "template_rss_mb": _rss_mb(template) if template else 0.0,
                        "workers": len(children.get(template, []))})


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found.setdefault(ppid, []).append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _rss_mb(pid: int | str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def report(tally: Tally, samples: list[dict], minutes: float) -> list[str]:
    """Print the results; the list of failed checks."""
    print(f"\n{minutes:g} min: {tally.started} runs started, {tally.returned} returned, "
          f"{tally.started - tally.returned - len(tally.raised)} lost, {len(tally.raised)} raised")
    print("\n| workflow | runs | statuses | median s |\n|---|---|---|---|")
    for name in dict.fromkeys(job.name for job in MIX):
        statuses = {s: n for (j, s), n in tally.statuses.items() if j == name}
        runs = tally.seconds.get(name, [])
        print(f"| {name} | {len(runs)} | {', '.join(f'{s} {n}' for s, n in sorted(statuses.items()))} "
              f"| {statistics.median(runs) if runs else 0:.1f} |")
    warm = samples[len(samples) // 4] if samples else {}
    last = samples[-1] if samples else {}
    templates = {s["template"] for s in samples if s["template"]}
    most = max((s["workers"] for s in samples), default=0)
    bound = MAX_WORKERS + SPARES  # running + warm spares
    print(f"\nworkers alive at once (running and spare): at most {most} (bound {bound}); "
          f"worker templates seen: {len(templates)}")
    for key, unit in (("rss_mb", "MB"), ("template_rss_mb", "MB"), ("fds", "")):
        print(f"{key}: {warm.get(key, 0):.0f}{unit} after the first quarter, {last.get(key, 0):.0f}{unit} at the end")
    failed = [*tally.raised, *tally.unexpected[:20]]
    failed += ["runs lost"] if tally.started != tally.returned + len(tally.raised) else []
    failed += [f"{len(templates)} worker templates (restarts)"] if len(templates) > 1 else []
    failed += [f"{most} workers at once"] if most > bound else []
    failed += ["host RSS grew"] if last and last["rss_mb"] > 1.1 * warm["rss_mb"] else []
    failed += ["host fds grew"] if last and last["fds"] > warm["fds"] + 8 else []
    return failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=16, help="workflows in flight")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per executor call")
    args = p.parse_args()
    tally, samples, stop = Tally(), [], threading.Event()
    watcher = threading.Thread(target=sample, args=(samples, stop), daemon=True)
    with executor_endpoint(None) as url:
        watcher.start()
        asyncio.run(soak(url, args.minutes, args.concurrency, args.max_tokens, tally))
        stop.set()
        watcher.join()
    failed = report(tally, samples, args.minutes)
    print("\nOK" if not failed else "\nFAILED:\n  " + "\n  ".join(failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
