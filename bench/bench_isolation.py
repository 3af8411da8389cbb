"""What running each workflow in its own worker process costs, against the in-process runtime.

    python bench/bench_isolation.py                 # the numbers in RESULTS.md
    python bench/bench_isolation.py --embedded 0    # the overhead part only (under a minute)

1. Overhead: 200 short math workflows (100 that compute and return a boxed answer with no
   operator call, 60 templates with one Custom call, 40 that gather three Custom calls and
   ensemble them; the last two kinds also make the extraction call), each run in-process (`isolated=False`: the old
   design, same validation, operators and extraction, no worker) and isolated (the default),
   interleaved (the order alternates per workflow), one at a time and then 16 at a time,
   against a loopback executor that answers at once (scoreflow/testing/scripted_server.py). The
   difference is what the worker costs: the fork, the pipe, the limits, the process's end.
   The 16-at-a-time rounds also count CPU time (this process, the worker template and its
   workers), which, unlike wall time, other jobs on the machine hardly change.
2. Embedded: the CoT baseline on GSM8K validation questions against the embedded executor
   (SmolLM2-135M served by scoreflow on loopback, the default run's executor settings), both
   modes interleaved: what the isolation costs where the default run spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time

from scoreflow.executor import ExecutorClient
from scoreflow.llama.registry import DEFAULT_MODEL
from scoreflow.optimize.config import EMBEDDED
from scoreflow.optimize.endpoint import executor_endpoint
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import FakeOpenAIServer
from scoreflow.workflow.static_baselines import baseline_workflow
from scoreflow.workflow.prompts import template_workflow, workflow_source
from scoreflow.workflow.runtime import run_workflow

MODES = {"in-process": False, "isolated": True}


def short_workflows() -> list[tuple[str, str]]:
    """(kind, code) of the 200 short workflows."""
    compute = [workflow_source("math", f'n = 0\nfor i in range({10 * i}):\n    n = n + i\n'
                                       'return "\\\\boxed{" + str(n) + "}"') for i in range(100)]
    template = [template_workflow("math").replace("Solve", f"Solve ({i})") for i in range(60)]
    ensemble = [workflow_source("math", f'rs = await asyncio.gather(*[self.custom(instruction="try {i}." + str(j)) '
                                        'for j in range(3)])\nbest = await self.sc_ensemble(solutions=rs)\n'
                                        'return best["response"]') for i in range(40)]
    return [("no call", c) for c in compute] + [("1 call", c) for c in template] + [("4 calls", c) for c in ensemble]


async def timed(code: str, executor: ExecutorClient, isolated: bool, problem: str = "What is 2 + 2?",
                **options) -> float:
    start = time.perf_counter()
    result = await run_workflow(code, problem, executor, "math", 60.0, isolated=isolated, **options)
    if result.status not in ("ok", "empty"):
        raise RuntimeError(f"a benchmark workflow ended with {result.status}: {result.error}")
    return time.perf_counter() - start


async def overhead(base_url: str) -> None:
    workflows = short_workflows()
    async with ExecutorClient(base_url, "fake", api_key="k", max_concurrency=16) as executor:
        start = time.perf_counter()
        await timed(workflows[0][1], executor, True)  # starts the worker template
        print(f"first isolated run, template start included: {1000 * (time.perf_counter() - start):.0f} ms\n")
        runs: list[tuple[str, str, float]] = []  # (kind, mode, seconds)
        for i, (kind, code) in enumerate(workflows):
            for mode in (MODES if i % 2 == 0 else reversed(MODES)):
                runs.append((kind, mode, await timed(code, executor, MODES[mode])))
        print("| workflows | in-process ms/run (median, mean) | isolated ms/run (median, mean) | added ms/run (mean) |")
        print("|---|---|---|---|")
        for kind in [*dict.fromkeys(k for k, _ in workflows), None]:
            ms = {m: [1000 * s for k, mm, s in runs if mm == m and kind in (k, None)] for m in MODES}
            cells = [f"{statistics.median(ms[m]):.1f}, {statistics.fmean(ms[m]):.1f}" for m in MODES]
            added = statistics.fmean(ms["isolated"]) - statistics.fmean(ms["in-process"])
            print(f"| {kind or 'all'} ({len(ms['isolated'])}) | {cells[0]} | {cells[1]} | {added:+.1f} |")
        print()
        for mode, isolated in MODES.items():
            gate, start, cpu = asyncio.Semaphore(16), time.perf_counter(), cpu_seconds()

            async def one(code: str) -> None:
                async with gate:
                    await timed(code, executor, isolated)

            await asyncio.gather(*(one(code) for _, code in workflows))
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            print(f"16 at a time, {mode}: {wall:.2f} s for 200 ({1000 * wall / len(workflows):.1f} ms/run), "
                  f"CPU {1000 * cpu / len(workflows):.1f} ms/run")


def cpu_seconds() -> float:
    """CPU time used so far by this process (the executor stand-in included) and by the worker
    template with every worker it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"scoreflow.workflow.worker" not in f.read():
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # ppid: our template, not another process's
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


async def embedded(n: int) -> None:
    questions = load_task("gsm8k", "validate").questions[:n]
    code = baseline_workflow("cot", "math")
    with executor_endpoint(None) as url:
        async with ExecutorClient(url, DEFAULT_MODEL, default_max_tokens=EMBEDDED.settings["executor_max_tokens"],
                                  max_concurrency=EMBEDDED.settings["executor_concurrency"]) as executor:
            seconds: dict[str, list[float]] = {m: [] for m in MODES}
            for i, q in enumerate(questions):
                for mode in (MODES if i % 2 == 0 else reversed(MODES)):
                    seconds[mode].append(await timed(code, executor, MODES[mode], q.prompt))
    means = {m: statistics.fmean(s) for m, s in seconds.items()}
    slower = 100 * (means["isolated"] / means["in-process"] - 1)
    print(f"\nembedded executor, CoT baseline, {n} GSM8K questions x 2 modes: in-process {means['in-process']:.2f} "
          f"s/run, isolated {means['isolated']:.2f} s/run ({slower:+.1f}%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedded", type=int, default=8, help="GSM8K questions for part 2 (0: skip it)")
    args = p.parse_args()
    with FakeOpenAIServer() as server:
        asyncio.run(overhead(server.base_url))
    if args.embedded:
        asyncio.run(embedded(args.embedded))


if __name__ == "__main__":
    main()
