"""Cost of one program-sandbox run (`run_python`: Programmer's solve(), Test's candidates, the
code tasks' scoring): the child as it runs now, `python -I -S` with site-packages put back on
sys.path, against the same child started with `python -I`, where `site` runs the host's .pth
files. The two alternate run by run, one at a time.

Then (`--part scoring` alone) the wall time of one code-task scoring run, `CodeTask.ascore`
of a HumanEval reference answer (the first questions of the test split in turn), one at a
time: the run with checks and its nonce as it is now. The same call exists on older
checkouts, so running this part from two checkouts in turn compares them.

    python bench/bench_sandbox.py [--runs 100] [--part all|site|scoring]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import scoreflow.sandbox.parent as parent
from scoreflow.sandbox import run_python_async
from scoreflow.tasks import load_task

SCORED_QUESTIONS = 5              # HumanEval test questions scored in turn
PROGRAMS = {
    "print(1)": "print(1)\n",
    "a solve() call (MBPP-like)": "import math\ndef solve():\n    return math.gcd(12, 18) * sum(range(100))\n",
}


async def one(code: str, call: str | None, with_site: bool) -> float:
    real = parent.asyncio.create_subprocess_exec

    async def launch(*argv, **kw):
        return await real(*(a for a in argv if not (with_site and a == "-S")), **kw)

    parent.asyncio.create_subprocess_exec = launch
    try:
        t = time.perf_counter()
        result = await run_python_async(code, call=call)
        assert result.status == "ok", result.stderr
        return (time.perf_counter() - t) * 1e3
    finally:
        parent.asyncio.create_subprocess_exec = real


async def scoring_ms(runs: int) -> list[float]:
    task = load_task("humaneval", "test")
    questions = task.questions[:SCORED_QUESTIONS]
    times = []
    for i in range(runs):
        question = questions[i % len(questions)]
        t = time.perf_counter()
        score = await task.ascore(question, question.row["prompt"] + question.row["canonical_solution"])
        times.append((time.perf_counter() - t) * 1e3)
        assert score == 1.0, question.id
    return times


async def main(runs: int, part: str) -> None:
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs} runs per program and child, alternating")
    if part in ("all", "site"):
        await site_table(runs)
    if part in ("all", "scoring"):
        times = await scoring_ms(runs)
        print("| run | ms, median / mean |\n|---|---|")
        print(f"| HumanEval scoring (`CodeTask.ascore`, reference answer) | "
              f"{statistics.median(times):.1f} / {statistics.mean(times):.1f} |")


async def site_table(runs: int) -> None:
    print("| program | `python -I` (site runs) ms, median / mean | `python -I -S` (now) ms, median / mean | speed-up (medians) |")
    print("|---|---|---|---|")
    for name, code in PROGRAMS.items():
        call = "solve()" if "solve" in code else None
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(runs):
            for with_site in ((True, False) if i % 2 == 0 else (False, True)):
                times[with_site].append(await one(code, call, with_site))
        old, new = times[True], times[False]
        print(f"| {name} | {statistics.median(old):.1f} / {statistics.mean(old):.1f} | "
              f"{statistics.median(new):.1f} / {statistics.mean(new):.1f} | "
              f"{statistics.median(old) / statistics.median(new):.2f}x |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="runs per program and child (default: 100)")
    ap.add_argument("--part", choices=("all", "site", "scoring"), default="all",
                    help="the `python -I` comparison, the scoring run, or both (default)")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.part))
