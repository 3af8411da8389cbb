"""MAgICoRE end to end on the default model: a handful of GSM8K questions through MAgICoRE and
through every baseline on the same Solver chains, in one command.

    python bench/bench_magicore.py [--limit 5] [--k 4] [--iters 2] [--max-tokens 256] [--out DIR]

Solver, Reviewer and Refiner are SmolLM2-135M-Instruct behind our own OpenAI-compatible server
(scoreflow.engine.server, started on loopback); ORM and PRM are the same model as a local
causal-LM reward model (reward.LocalLMRewardModel), a weak stand-in for trained reward models.
So the numbers show that the pipeline runs and what it costs, not what MAgICoRE can do: a
135M model solves almost no GSM8K problems, and its reward signal is close to noise.
Prints the results table (also in OUT/results.md); rerunning with the same --out resumes.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from scoreflow.magicore.__main__ import main


def bench(limit: int, k: int, iters: int, max_tokens: int, out: str | None, seed: int) -> None:
    out = out or tempfile.mkdtemp(prefix="bench_magicore_")
    start = time.perf_counter()
    summary = main("gsm8k", out, limit=limit, k=k, iters=iters, max_tokens=max_tokens,
                   seed=seed, concurrency=limit)
    wall = time.perf_counter() - start
    print(f"\nwall {wall:.0f} s on {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads; run directory {out}")
    if summary is None:
        raise SystemExit("some questions failed; see errors.jsonl in the run directory")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=5, help="first N GSM8K test questions")
    ap.add_argument("--k", type=int, default=4, help="Solver chains per question")
    ap.add_argument("--iters", type=int, default=2, help="maximum refinement iterations")
    ap.add_argument("--max-tokens", type=int, default=256, help="per Solver/Reviewer/Refiner call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="run directory (default: a new temporary directory)")
    bench(**vars(ap.parse_args()))
