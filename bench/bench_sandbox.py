"""Cost of one program-sandbox run (`run_python`: Programmer's solve(), Test's candidates, the
code tasks' scoring): the child as it runs now, `python -I -S` with site-packages put back on
sys.path, against the same child started with `python -I`, where `site` runs the host's .pth
files. The two alternate run by run, one at a time.

    python bench/bench_sandbox.py [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import scoreflow.sandbox.parent as parent
from scoreflow.sandbox import run_python_async

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


async def main(runs: int) -> None:
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs} runs per program and child, alternating")
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
    asyncio.run(main(ap.parse_args().runs))
