"""Where a plain decode step's time goes, at batch 1 / 8 / 32 (the embedded model, CPU fp32).

    python bench/experiments/profile_decode.py [--batches 1 8 32] [--steps 24] [--model smollm2-135m-instruct] [--scoreflow]

`--scoreflow` profiles ScoreFlow's generation stage instead: 8 generator prompts (the math guide
+ a GSM8K question, ~1050 tokens sharing the ~1000-token guide) x 4 samples at temperature 0.7,
top-p 0.95: 32 rows whose decode reads the guide once (shared-prefix attention).

Each part of the step is timed with wall-clock timers wrapped around it (torch on CPU runs
synchronously, so a timer around a call measures that call):

    matmuls     the q/k/v/o and gate/up/down projections (nn.Linear)
    LM head     the vocabulary projection
    attention   the cache plan's attend: storing k/v and the attention kernel
    norms+RoPE  RMSNorm and the rotary embedding
    sampling    token choice and log-probs
    other       everything else: embedding, residual adds, SwiGLU's silu*mul, building the
                plan (masks, index tensors), the engine's Python bookkeeping

Speculation is off (draft_tokens=0): this is the step speculation would have to beat. The
step time without timers is measured first, from the same prompts.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from collections import defaultdict

import torch

import scoreflow.engine.engine as engine_module
import scoreflow.llama.model as model_module
from scoreflow.engine import Engine, SamplingParams
from scoreflow.engine.attention_plans import AppendPlan, PackedPrefill, SharedPrefixDecode
from scoreflow.llama import DEFAULT_MODEL, load_model, load_tokenizer
from scoreflow.tasks.data import packaged_data_dir

PARTS = ("matmuls", "LM head", "attention", "norms+RoPE", "sampling")
spent: dict[str, float] = defaultdict(float)


def timed(fn, part: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - t
    return wrapper


def instrument(model) -> None:
    """Wrap every part listed in PARTS (instances for the linears, classes and names for the rest)."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.forward = timed(mod.forward, "LM head" if name == "lm_head" else "matmuls")
    for plan in (AppendPlan, PackedPrefill, SharedPrefixDecode):
        plan.attend = timed(plan.attend, "attention")
    model_module.RMSNorm.forward = timed(model_module.RMSNorm.forward, "norms+RoPE")
    model_module.apply_rope = timed(model_module.apply_rope, "norms+RoPE")
    engine_module.sample = timed(engine_module.sample, "sampling")
    engine_module.token_logprobs = timed(engine_module.token_logprobs, "sampling")


def decode_steps(engine: Engine, prompts: list[list[int]], steps: int, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0) -> list[float]:
    """Admit every prompt (n samples each), then time `steps` decode steps; returns each step's seconds."""
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=steps + 2, ignore_eos=True, seed=0)
    requests = [engine.submit(p, params) for p in prompts]
    while len(engine._running) < n * len(prompts) or engine._waiting or not engine._inbox.empty():
        engine.step()  # prefill
    spent.clear()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    while not all(r.done.is_set() for r in requests):
        engine.step()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--scoreflow", action="store_true", help="ScoreFlow's generation stage: 8 prompts x 4 samples")
    args = ap.parse_args()
    tok, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    if args.scoreflow:
        return profile_scoreflow(model, tok, args.steps)
    rows = [json.loads(line) for line in (packaged_data_dir() / "aflow" / "gsm8k_validate.jsonl").read_text().splitlines()]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}]))
               for r in rows[: max(args.batches)]]
    engine = Engine(model, tok, max_batch=max(args.batches), max_seq_len=512, draft_tokens=0)
    decode_steps(engine, prompts[:1], 4)  # warm-up
    plain = {b: sorted(decode_steps(engine, prompts[:b], args.steps))[args.steps // 2] for b in args.batches}
    instrument(model)
    print(f"# {args.model}, CPU fp32, {torch.get_num_threads()} threads, {args.steps} decode steps per batch after the "
          f"prefill, GSM8K chat prompts; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| batch | step ms (no timers, median) | step ms (timed, mean) | "
          + " | ".join(f"{p} ms" for p in PARTS) + " | other ms |")
    print("|---|---|---|" + "---|" * (len(PARTS) + 1))
    for b in args.batches:
        times = decode_steps(engine, prompts[:b], args.steps)
        total = sum(times) / len(times)
        parts = [spent[p] / len(times) for p in PARTS]
        cells = " | ".join(f"{x * 1e3:.1f} ({x / total:.0%})" for x in parts)
        other = total - sum(parts)
        print(f"| {b} | {plain[b] * 1e3:.1f} | {total * 1e3:.1f} | {cells} | {other * 1e3:.1f} ({other / total:.0%}) |",
              flush=True)


def profile_scoreflow(model, tok, steps: int) -> None:
    from scoreflow.optimize.generator import prompt_ids

    rows = [json.loads(line) for line in (packaged_data_dir() / "aflow" / "gsm8k_validate.jsonl").read_text().splitlines()]
    prompts = [prompt_ids(tok, "math", r["question"]) for r in rows[:8]]
    engine = Engine(model, tok, max_batch=32, max_seq_len=max(map(len, prompts)) + steps + 8, draft_tokens=0)
    sampled = dict(n=4, temperature=0.7, top_p=0.95)
    decode_steps(engine, prompts[:1], 4)  # warm-up
    plain = sorted(decode_steps(engine, prompts, steps, **sampled))[steps // 2]
    instrument(model)
    times = decode_steps(engine, prompts, steps, **sampled)
    total = sum(times) / len(times)
    parts = [spent[p] / len(times) for p in PARTS]
    print(f"# ScoreFlow's generation stage: 8 prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x 4 "
          f"samples, {steps} decode steps after the prefill; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    print("| rows | step ms (no timers, median) | step ms (timed, mean) | "
          + " | ".join(f"{p} ms" for p in PARTS) + " | other ms |")
    print("|---|---|---|" + "---|" * (len(PARTS) + 1))
    cells = " | ".join(f"{x * 1e3:.1f} ({x / total:.0%})" for x in parts)
    other = total - sum(parts)
    print(f"| 32 | {plain * 1e3:.1f} | {total * 1e3:.1f} | {cells} | {other * 1e3:.1f} ({other / total:.0%}) |")


if __name__ == "__main__":
    main()
