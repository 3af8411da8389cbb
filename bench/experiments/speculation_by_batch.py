"""Where speculative decoding pays: greedy tok/s at 1/2/4/8 rows for 0/1/2/4 drafted tokens per
row (prompt-lookup drafts), with every row count allowed to speculate. The engine's rule
(VERIFY_POSITIONS in engine.py) is read off this table.

    python bench/experiments/speculation_by_batch.py [--model NAME] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import scoreflow.engine.engine as engine_module
from scoreflow.engine import Engine, SamplingParams
from scoreflow.llama import DEFAULT_MODEL, load_model, load_tokenizer
from scoreflow.tasks.data import packaged_data_dir

DRAFTS = (0, 1, 2, 4)


def prompts(tok, n: int) -> list[list[int]]:
    """The first n GSM8K validation questions as chat prompts (as bench/bench_generate.py builds them)."""
    rows = [json.loads(line) for line in
            (packaged_data_dir() / "aflow" / "gsm8k_validate.jsonl").read_text().splitlines()[:n]]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}])) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    tok, model = load_tokenizer(a.model), load_model(a.model, device="cpu")
    batch = prompts(tok, 8)
    engine_module.VERIFY_POSITIONS = 1 << 30  # let every row count speculate
    engine = Engine(model, tok, max_batch=8, max_seq_len=512)
    engine.generate(batch[:1], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    print(f"# {a.model}, CPU fp32, {torch.get_num_threads()} threads, greedy, {a.new_tokens} new tokens, GSM8K chat prompts")
    print("| rows | " + " | ".join(f"{d} drafts tok/s" for d in DRAFTS) + " |\n|---|" + "---|" * len(DRAFTS))
    for rows in (1, 2, 4, 8):
        rates = []
        for d in DRAFTS:
            engine.draft_tokens = d
            t = time.perf_counter()
            engine.generate(batch[:rows], SamplingParams(max_tokens=a.new_tokens, ignore_eos=True))
            rates.append(rows * a.new_tokens / (time.perf_counter() - t))
        print(f"| {rows} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
