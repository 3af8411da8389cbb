"""MAgICoRE end to end on an embedded model: GSM8K questions through MAgICoRE and through
every baseline on the same Solver chains, then each ablation on those same chains.

    python bench/bench_magicore.py [--model smollm2-135m-instruct] [--rm MODEL] [--limit 5] [--k 4]
                                   [--iters 2] [--max-tokens 256] [--self-refine-rounds N] [--out DIR]
                                   [--ablations refine-all,cond1-only,cond2-only,no-review]

Solver, Reviewer and Refiner are --model behind our own OpenAI-compatible server
(scoreflow.engine.server, started on loopback); ORM and PRM are --rm (default: the same model)
as a local causal-LM reward model (local_rm.LocalLMRewardModel), a weak stand-in for trained
reward models. With SmolLM2-135M the numbers show that the pipeline runs and what it costs, not
what MAgICoRE can do: a 135M model solves almost no GSM8K problems. Qwen2.5-Coder-0.5B
(`--model qwen2.5-coder-0.5b-instruct`) solves some.
Each ablation runs in OUT/ablation-NAME, seeded with the full run's Solver chains
(initial.jsonl), so the ablations differ from MAgICoRE only in what they change.
Prints the results tables (also in OUT/results.md); rerunning with the same --out resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scoreflow.llama.registry import DEFAULT_MODEL
from scoreflow.magicore.baselines import SELF_REFINE_ROUNDS
from scoreflow.magicore.loop import ABLATIONS


def run_magicore(out: Path, settings: list[str]) -> tuple[dict, float]:
    """One `python -m scoreflow.magicore` run in its own process (each loads its own server and
    reward models; separate processes return that memory between runs); (summary, wall s)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scoreflow.magicore", "--task", "gsm8k", "--out", str(out), *settings],
                   check=True)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - t0


def bench(model: str, rm: str | None, limit: int, k: int, iters: int, max_tokens: int, self_refine_rounds: int,
          concurrency: int, out: str | None, seed: int, ablations: str) -> None:
    out = Path(out or tempfile.mkdtemp(prefix="bench_magicore_"))
    settings = [f"--{name.replace('_', '-')}={value}" for name, value in
                dict(executor_model=model, orm=rm or model, prm=rm or model, limit=limit, k=k, iterations=iters,
                     max_new_tokens=max_tokens, seed=seed, question_concurrency=concurrency,
                     self_refine_rounds=self_refine_rounds).items()]
    start = time.perf_counter()
    rows = [("none (MAgICoRE)", *run_magicore(out, settings))]
    for name in [a for a in ablations.split(",") if a]:
        if name not in ABLATIONS:
            raise SystemExit(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        run_dir = out / f"ablation-{name}"
        run_dir.mkdir(exist_ok=True)
        if not (run_dir / "initial.jsonl").exists():
            shutil.copy(out / "initial.jsonl", run_dir / "initial.jsonl")  # the same Solver chains
        rows.append((name, *run_magicore(run_dir, [*settings, "--baselines=none", f"--ablation={name}"])))
    print("\n| ablation | accuracy | classified hard at t=0 | calls / question | tokens / question | wall s |")
    print("|---|---|---|---|---|---|")
    for name, summary, wall in rows:
        first, last = summary["iterations"][0], summary["iterations"][-1]
        print(f"| {name} | {last['accuracy']:.3f} | {first['hard']:.2f} | {last['calls']:.1f} | "
              f"{last['tokens']:.0f} | {wall:.0f} |")
    print(f"\nwall {time.perf_counter() - start:.0f} s on {platform.processor() or platform.machine()}; "
          f"run directory {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="Solver, Reviewer and Refiner: an embedded name or HF folder")
    ap.add_argument("--rm", help="ORM and PRM stand-in (default: --model)")
    ap.add_argument("--limit", type=int, default=5, help="first N GSM8K test questions")
    ap.add_argument("--k", type=int, default=4, help="Solver chains per question")
    ap.add_argument("--iters", type=int, default=2, help="maximum refinement iterations")
    ap.add_argument("--max-tokens", type=int, default=256, help="per Solver/Reviewer/Refiner call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--self-refine-rounds", type=int, default=SELF_REFINE_ROUNDS, help="rounds of the Self-Refine baselines")
    ap.add_argument("--concurrency", type=int, default=5, help="questions in flight at once")
    ap.add_argument("--ablations", default=",".join(a for a in ABLATIONS if a != "none"),
                    help="comma list of ablations to run on the same Solver chains (empty: none)")
    ap.add_argument("--out", help="run directory (default: a new temporary directory)")
    bench(**vars(ap.parse_args()))
