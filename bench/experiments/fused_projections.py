"""What stacking q/k/v and gate/up into one prepacked matrix gains in a plain decode step.

    python bench/experiments/fused_projections.py [--model smollm2-135m-instruct] [--batches 1 8 32] [--rounds 8]

One process, one engine: each round times 16 decode steps at every batch with the stacked copies
(`Transformer.prepack()`, the default) and with one packed copy per projection
(`prepack(fuse=False)`), in alternating order, and reports the median step and the median of the
per-round ratios. Speculation is off (draft_tokens=0); prompts are GSM8K chat prompts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from profile_decode import decode_steps  # this script's folder is on sys.path when it runs

from scoreflow.engine import Engine
from scoreflow.llama import DEFAULT_MODEL, load_model, load_tokenizer
from scoreflow.tasks.data import packaged_data_dir

STEPS = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    tok, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    rows = [json.loads(line) for line in (packaged_data_dir() / "aflow" / "gsm8k_validate.jsonl").read_text().splitlines()]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}]))
               for r in rows[: max(args.batches)]]
    engine = Engine(model, tok, max_batch=max(args.batches), max_seq_len=512, draft_tokens=0)
    decode_steps(engine, prompts[:1], 4)  # warm-up
    ms: dict[tuple[bool, int], list[float]] = {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for fuse in (True, False) if r % 2 else (False, True):
            model.prepack(fuse=fuse)
            for b in args.batches:
                ms.setdefault((fuse, b), []).append(statistics.median(decode_steps(engine, prompts[:b], STEPS)) * 1e3)
    print(f"# {args.model}, CPU fp32, {torch.get_num_threads()} threads, {args.rounds} rounds x {STEPS} decode steps, "
          f"{time.perf_counter() - t0:.0f} s; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| batch | one copy per projection, ms/step | stacked q/k/v and gate/up, ms/step | speedup, median of rounds "
          "| slowest-fastest round |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        apart, stacked = ms[(False, b)], ms[(True, b)]
        ratios = [a / s for a, s in zip(apart, stacked)]
        print(f"| {b} | {statistics.median(apart):.1f} | {statistics.median(stacked):.1f} | "
              f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |")


if __name__ == "__main__":
    main()
