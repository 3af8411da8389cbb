"""Generation throughput: our Engine vs transformers `generate`, same model, prompts and
lengths, CPU fp32, side by side in one process.

    python bench/bench_generate.py [--model NAME] [--batches 1 8 32] [--new-tokens 128] [--scoreflow 8]

1. Greedy, GSM8K chat prompts, batch 1/8/32 (the issue's anchor): ours with speculative
   decoding (prompt-lookup drafts, the default; fewer per row as rows grow), ours with
   plain decoding, ours with plain decoding and without prepacked weights (scoreflow/kernels/linear.py;
   what the engine did before), and transformers, interleaved per batch; with the share of
   drafted tokens accepted. Also times one batch-1 decode step against the memory-bandwidth floor (weight
   bytes / read bandwidth, measured here with a plain weight-streaming matvec).
2. `--scoreflow Q`: the shape of ScoreFlow's generation stage: Q generator prompts (the math
   guide + a GSM8K question, ~1200 tokens, sharing the ~1100-token guide), k=4 samples each
   at temperature 0.7, top-p 0.95, 256 new tokens (EOS ignored, so both sides emit the same
   count). Ours by default (the guide prefilled once for all prompts, shared-prefix decode
   attention), with each prompt prefilled whole, with no sharing at all, without prepacked
   weights, and with speculation forced on at this batch size; transformers with
   num_return_sequences=4. `--batches` with no sizes skips part 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import scoreflow.engine.engine as engine_module
from scoreflow.engine import Engine, SamplingParams
from scoreflow.engine.engine import DRAFT_TOKENS, VERIFY_POSITIONS, DraftStats, shared_prompt_prefix
from scoreflow.llama import DEFAULT_MODEL, load_model, load_tokenizer
from scoreflow.llama.registry import resolve_model_dir
from scoreflow.tasks.data import packaged_data_dir

DATA = packaged_data_dir() / "aflow" / "gsm8k_validate.jsonl"


def prompts(tok, n: int) -> list[list[int]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}])) for r in rows]


def ours(engine: Engine, batch: list[list[int]], new: int, draft: int = 0) -> tuple[float, list[list[int]]]:
    """(tok/s, the tokens) with `draft` prompt-lookup tokens per step (0: plain decoding)."""
    engine.draft_tokens, engine.draft_stats = draft, DraftStats()
    t = time.perf_counter()
    out = engine.generate(batch, SamplingParams(max_tokens=new, ignore_eos=True))
    dt = time.perf_counter() - t
    assert all(len(c.token_ids) == new for c in out)
    return len(batch) * new / dt, [c.token_ids for c in out]


def prepacked(model, on: bool) -> None:
    """Give the model its prepacked weights (the engine's default), or take them away."""
    if on:
        model.prepack()
    else:
        model.unpack()


def accepted(engine: Engine) -> str:
    s = engine.draft_stats
    return f"{s.accepted}/{s.drafted} ({s.accepted / max(1, s.drafted):.0%})"


def theirs(hf, batch: list[list[int]], new: int) -> float:
    T = max(map(len, batch))
    ids = torch.tensor([[0] * (T - len(b)) + b for b in batch])
    mask = torch.tensor([[0] * (T - len(b)) + [1] * len(b) for b in batch])
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    dt = time.perf_counter() - t
    assert out.shape[1] == T + new
    return len(batch) * new / dt


def scoreflow_prompts(tok, n: int) -> list[list[int]]:
    from scoreflow.optimize.generator import prompt_ids

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [prompt_ids(tok, "math", r["question"]) for r in rows]


def ours_sampled(engine: Engine, batch: list[list[int]], k: int, new: int, shared: bool,
                 speculate: bool = False, shared_prefill: bool = True) -> float:
    """shared=False: no prompt sharing at all; shared_prefill=False: decode attention reads the
    shared prompt once, but each prompt is prefilled whole."""
    engine_module.SHARED_PREFIX_MIN = 64 if shared else 1 << 30
    engine_module.shared_prompt_prefix = shared_prompt_prefix if shared_prefill else (lambda prompts: 0)
    engine_module.VERIFY_POSITIONS = 1 << 30 if speculate else VERIFY_POSITIONS
    engine.draft_stats = DraftStats()
    p = [SamplingParams(n=k, temperature=0.7, top_p=0.95, max_tokens=new, ignore_eos=True, seed=i)
         for i in range(len(batch))]
    t = time.perf_counter()
    out = engine.generate(batch, p)
    dt = time.perf_counter() - t
    assert len(out) == len(batch) * k and all(len(c.token_ids) == new for c in out)
    return len(out) * new / dt


def theirs_sampled(hf, batch: list[list[int]], k: int, new: int) -> float:
    T = max(map(len, batch))
    ids = torch.tensor([[0] * (T - len(b)) + b for b in batch])
    mask = torch.tensor([[0] * (T - len(b)) + [1] * len(b) for b in batch])
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                          temperature=0.7, top_p=0.95, top_k=0, num_return_sequences=k, pad_token_id=0,
                          eos_token_id=None)
    dt = time.perf_counter() - t
    assert out.shape == (len(batch) * k, T + new)
    return len(batch) * k * new / dt


def bandwidth_floor(model) -> tuple[float, float]:
    """(seconds to stream every weight once through a matvec, weight bytes)."""
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n] + [model.lm_head.weight]
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            t = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(torch.ones(1, w.shape[1]), w)
            best = min(best, time.perf_counter() - t)
    return best, nbytes


def decode_step_time(engine: Engine, prompt: list[int]) -> float:
    req = engine.submit(prompt, SamplingParams(max_tokens=64, ignore_eos=True))
    engine.step()  # prefill
    times = []
    while not req.done.is_set():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL, help="an embedded model name or HF folder")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--scoreflow", type=int, default=0, metavar="Q", help="also the ScoreFlow-shaped run, Q prompts")
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    tok, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=torch.float32).eval()
    if args.batches:
        engine = Engine(model, tok, max_batch=max(args.batches), max_seq_len=512)
        all_prompts = prompts(tok, max(args.batches))
        print(f"# {args.model}, CPU fp32, {torch.get_num_threads()} threads, greedy, {args.new_tokens} new tokens, "
              f"GSM8K chat prompts ({min(map(len, all_prompts))}-{max(map(len, all_prompts))} tokens); "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
        print("| batch | ours, speculative tok/s | ours, plain tok/s | ours, plain, not prepacked tok/s "
              "| transformers tok/s | speculative vs transformers | plain vs transformers "
              "| not prepacked vs transformers | drafts accepted |")
        print("|---|---|---|---|---|---|---|---|---|")
        ours(engine, all_prompts[:1], 8)  # warm-up both
        theirs(hf, all_prompts[:1], 8)
        for b in args.batches:
            (spec, spec_ids), counts = ours(engine, all_prompts[:b], args.new_tokens, DRAFT_TOKENS), accepted(engine)
            plain, plain_ids = ours(engine, all_prompts[:b], args.new_tokens)
            prepacked(model, False)
            unpacked, unpacked_ids = ours(engine, all_prompts[:b], args.new_tokens)
            prepacked(model, True)
            h = theirs(hf, all_prompts[:b], args.new_tokens)
            assert spec_ids == plain_ids, "speculative greedy differs from plain greedy"
            same = "" if unpacked_ids == plain_ids else " (tokens differ from prepacked)"
            print(f"| {b} | {spec:.1f} | {plain:.1f} | {unpacked:.1f}{same} | {h:.1f} | {spec / h:.2f}x "
                  f"| {plain / h:.2f}x | {unpacked / h:.2f}x | {counts} |", flush=True)
        engine.draft_tokens = 0
        floor, nbytes = bandwidth_floor(model)
        step = decode_step_time(engine, all_prompts[0])
        print(f"\nbatch-1 decode step (median): {step * 1e3:.1f} ms; weight bytes read per step {nbytes / 1e6:.0f} MB; "
              f"bandwidth floor (weights streamed once by matvec here: {nbytes / floor / 1e9:.1f} GB/s): "
              f"{floor * 1e3:.1f} ms -> {step / floor:.2f}x the floor; at 13 GB/s: {nbytes / 13e9 * 1e3:.1f} ms")
    if args.scoreflow:
        k, new, batch = 4, 256, scoreflow_prompts(tok, args.scoreflow)
        big = Engine(model, tok, max_batch=len(batch) * k, max_seq_len=max(map(len, batch)) + new)
        print(f"\nScoreFlow generation: {len(batch)} prompts ({min(map(len, batch))}-{max(map(len, batch))} tokens) x "
              f"{k} samples, temperature 0.7, top-p 0.95, {new} new tokens")
        print("| engine | tok/s | vs transformers | drafts accepted |")
        print("|---|---|---|---|")
        default = "ours, default: guide prefilled once, shared-prefix decode"
        rates = {default: (ours_sampled(big, batch, k, new, True), "-"),
                 "ours, each prompt prefilled whole, shared-prefix decode":
                     (ours_sampled(big, batch, k, new, True, shared_prefill=False), "-"),
                 "ours, no sharing": (ours_sampled(big, batch, k, new, False), "-")}
        prepacked(model, False)
        rates["ours, default, not prepacked"] = (ours_sampled(big, batch, k, new, True), "-")
        prepacked(model, True)
        rates["ours, speculative at every batch size"] = (ours_sampled(big, batch, k, new, False, True), accepted(big))
        rates["transformers generate"] = (theirs_sampled(hf, batch, k, new), "-")
        base = rates["transformers generate"][0]
        for name, (rate, counts) in rates.items():
            print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {counts} |", flush=True)


if __name__ == "__main__":
    main()
