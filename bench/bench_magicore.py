"""MAgICoRE end to end on an embedded model: GSM8K questions through MAgICoRE (the paper's
difficulty rule) and every baseline, the budget-matched ones included; then, on the SAME Solver
chains, MAgICoRE under the reference's rule and each of the paper's variants (ablations).

    python bench/bench_magicore.py [--model smollm2-135m-instruct] [--rm MODEL] [--limit 5] [--k 4]
                                   [--iters 2] [--max-tokens 256] [--baseline-k N] [--out DIR]
                                   [--ablations refine-all,cond1-only,...]

Solver, Reviewer and Refiner are --model behind our own OpenAI-compatible server
(scoreflow.engine.server, started on loopback); ORM and PRM are --rm (default: the same model)
as a local causal-LM reward model (local_rm.LocalLMRewardModel), a weak stand-in for trained
reward models. With SmolLM2-135M the numbers show that the pipeline runs and what it costs, not
what MAgICoRE can do: a 135M model solves almost no GSM8K problems. Qwen2.5-Coder-0.5B
(`--model qwen2.5-coder-0.5b-instruct`) solves some.
Each further run (OUT/rule-reference, OUT/ablation-NAME) is seeded with the full run's Solver
chains (initial.jsonl), so it differs from MAgICoRE only in what it changes. The budget-matched
baselines (--baseline-k, default 3k as the paper's 120 against k = 40) draw their own samples.
Prints the tables (also in OUT/results.md); rerunning with the same --out resumes.
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
from scoreflow.magicore.loop import ABLATIONS


def run_magicore(out: Path, settings: list[str]) -> tuple[dict, float]:
    """One `python -m scoreflow.magicore` run in its own process (each loads its own server and
    reward models; separate processes return that memory between runs); (summary, wall s)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scoreflow.magicore", "--task", "gsm8k", "--out", str(out), *settings],
                   check=True)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - t0


def seeded_run(out: Path, name: str, settings: list[str]) -> tuple[dict, float]:
    """A run in OUT/NAME on the full run's Solver chains, without baselines."""
    run_dir = out / name
    run_dir.mkdir(exist_ok=True)
    if not (run_dir / "initial.jsonl").exists():
        shutil.copy(out / "initial.jsonl", run_dir / "initial.jsonl")  # the same Solver chains
    return run_magicore(run_dir, [*settings, "--baselines=none"])


def bench(model: str, rm: str | None, limit: int, k: int, iters: int, max_tokens: int, baseline_k: int | None,
          concurrency: int, out: str | None, seed: int, ablations: str) -> None:
    out = Path(out or tempfile.mkdtemp(prefix="bench_magicore_"))
    settings = [f"--{name.replace('_', '-')}={value}" for name, value in
                dict(executor_model=model, orm=rm or model, prm=rm or model, limit=limit, k=k, iterations=iters,
                     max_new_tokens=max_tokens, seed=seed, question_concurrency=concurrency).items()]
    start = time.perf_counter()
    main, wall = run_magicore(out, [*settings, f"--baseline-k={baseline_k or 3 * k}"])
    reference = seeded_run(out, "rule-reference", [*settings, "--difficulty-rule=reference"])
    rows = [("MAgICoRE", "paper", main, wall), ("MAgICoRE", "reference", *reference)]
    for name in [a for a in ablations.split(",") if a]:
        if name not in ABLATIONS:
            raise SystemExit(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        ablated = seeded_run(out, f"ablation-{name}", [*settings, f"--ablation={name}"])
        rows.append((f"ablation {name}", "paper", *ablated))
    questions = main["questions"]
    print(f"\n{main['markdown']}\n")
    print("| run | difficulty rule | hard questions at t=0 | accuracy | calls / question | tokens / question "
          "| wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, rule, summary, wall in rows:
        first, last = summary["iterations"][0], summary["iterations"][-1]
        print(f"| {name} | {rule} | {round(first['hard'] * questions)}/{questions} | {last['accuracy']:.3f} | "
              f"{last['calls']:.1f} | {last['tokens']:.0f} | {wall:.0f} |")
    print(f"\nwall {time.perf_counter() - start:.0f} s on {platform.processor() or platform.machine()}; "
          f"run directory {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="Solver, Reviewer and Refiner: an embedded name or HF folder")
    ap.add_argument("--rm", help="ORM and PRM stand-in (default: --model)")
    ap.add_argument("--limit", type=int, default=5, help="first N GSM8K test questions")
    ap.add_argument("--k", type=int, default=4, help="Solver chains per question")
    ap.add_argument("--iters", type=int, default=2, help="refinement iterations at most (and Self-Refine rounds)")
    ap.add_argument("--max-tokens", type=int, default=256, help="per Solver/Reviewer/Refiner call")
    ap.add_argument("--baseline-k", type=int, help="samples of the budget-matched baselines (default: 3k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=5, help="questions in flight at once")
    ap.add_argument("--ablations", default=",".join(a for a in ABLATIONS if a != "none"),
                    help="comma list of ablations to run on the same Solver chains (empty: none)")
    ap.add_argument("--out", help="run directory (default: a new temporary directory)")
    bench(**vars(ap.parse_args()))
