"""A/B of the plain decode step between two checkouts of scoreflow (e.g. before and after a
refactor), alternated in fresh processes so both see the same machine state.

    python bench/experiments/ab_decode_step.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 2] [--steps 40]

Each process loads the embedded SmolLM2-135M from its checkout, admits 1, 8, then 32 GSM8K
chat prompts and prints the median decode-step milliseconds at each batch (speculation off
where the checkout has it). Make a checkout with `git worktree add DIR COMMIT`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "scoreflow" / "data" / "aflow" / "gsm8k_validate.jsonl"


def child(steps: int) -> dict[int, float]:
    import torch

    from scoreflow.engine import Engine, SamplingParams
    from scoreflow.llama import DEFAULT_MODEL, load_model, load_tokenizer

    tok, model = load_tokenizer(DEFAULT_MODEL), load_model(DEFAULT_MODEL, device="cpu")
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:32]]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}])) for r in rows]
    plain = {"draft_tokens": 0} if "draft_tokens" in Engine.__init__.__code__.co_varnames else {}
    engine = Engine(model, tok, max_batch=32, max_seq_len=512, **plain)
    out = {}
    with torch.inference_mode():
        for batch in (1, 8, 32):
            requests = [engine.submit(p, SamplingParams(max_tokens=steps, ignore_eos=True)) for p in prompts[:batch]]
            engine.step()  # the packed prefill
            times = []
            while not all(r.done.is_set() for r in requests):
                t = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - t)
            out[batch] = sorted(times)[len(times) // 2] * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkouts", nargs=2, help="the two checkouts (folders holding scoreflow/)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.steps)))
        return
    print("| run | batch 1 ms | batch 8 ms | batch 32 ms |\n|---|---|---|---|")
    for r in range(a.rounds):
        for checkout in a.checkouts:
            env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
            proc = subprocess.run([sys.executable, __file__, *a.checkouts, "--steps", str(a.steps), "--child"],
                                  env=env, capture_output=True, text=True, check=True, cwd="/")
            ms = json.loads(proc.stdout.splitlines()[-1])
            print(f"| {checkout}, round {r + 1} | {ms['1']:.1f} | {ms['8']:.1f} | {ms['32']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
