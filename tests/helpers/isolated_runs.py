"""Runs workflows through run_workflow in a process of its own, for tests that must survive
a regression that kills, hangs or floods the process calling run_workflow.

    python tests/helpers/isolated_runs.py < request.json

request: {"base_url": ..., "concurrency": n, "linger_s": s,
          "jobs": [{"code": ..., "problem": ..., "family": ..., "timeout_s": ...}, ...]}
stdout:  one JSON line per job as it returns: {"index", "status", "error", "raw" (the first
         200 characters), "elapsed_s", "returned" (time.monotonic(), the test's clock too)},
         then {"done": true}.

After the last run the event loop keeps running for linger_s: work a run left behind would
still reach the server, where the test sees it arrive after that run returned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from scoreflow.executor import ExecutorClient
from scoreflow.workflow.runtime import run_workflow


async def main(request: dict) -> None:
    gate = asyncio.Semaphore(request["concurrency"])
    async with ExecutorClient(request["base_url"], "fake-model", api_key="sk-test", timeout=30.0) as executor:

        async def one(index: int, job: dict) -> None:
            async with gate:
                start = time.monotonic()
                result = await run_workflow(job["code"], job["problem"], executor, job["family"], job["timeout_s"])
                returned = time.monotonic()
                print(json.dumps({"index": index, "status": result.status, "error": result.error,
                                  "raw": result.raw_answer[:200], "elapsed_s": returned - start,
                                  "returned": returned}), flush=True)

        await asyncio.gather(*(one(i, job) for i, job in enumerate(request["jobs"])))
        await asyncio.sleep(request["linger_s"])
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.load(sys.stdin)))
