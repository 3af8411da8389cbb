"""`python -m scoreflow.generate`: a chat completion from a local model, streamed to stdout.

    python -m scoreflow.generate --prompt "What is 7 * 8?" --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import sys
import time

from .cli import run_cli
from .llama import DEFAULT_MODEL, load_tokenizer


def main(model: str = DEFAULT_MODEL, prompt: str = "", system: str | None = None,
         max_new_tokens: int = 128, temperature: float = 0.0, seed: int | None = None) -> str:
    tok = load_tokenizer(model)  # an unknown model fails here, before torch (slow to import) is imported
    from .engine import Engine, SamplingParams
    from .llama import load_model

    net = load_model(model)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    ids = tok.encode(tok.apply_chat_template(messages))
    engine = Engine(net, tok, max_batch=1, max_seq_len=len(ids) + max_new_tokens)
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    t0 = time.perf_counter()

    def show(seq, new_text):
        if new_text:
            sys.stdout.write(new_text)
            sys.stdout.flush()

    completion = engine.generate_streaming(ids, params, show)
    dt = time.perf_counter() - t0
    n = len(completion.token_ids)
    print(f"\n[{n} tokens in {dt:.1f}s, {n / max(dt, 1e-9):.1f} tok/s, finish: {completion.finish_reason}]",
          file=sys.stderr)
    return completion.text


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m scoreflow.generate",
                                description="One chat completion from a local model, streamed to stdout.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Known model name or HF-format directory (default: %(default)s).")
    p.add_argument("--prompt", required=True, help="The user message.")
    p.add_argument("--system", default=None, help="An optional system message.")
    p.add_argument("--max-new-tokens", type=int, default=128, help="Tokens to generate at most (default: %(default)s).")
    p.add_argument("--temperature", type=float, default=0.0, help="Sampling temperature; 0 is greedy (default).")
    p.add_argument("--seed", type=int, default=None, help="Seed of the sampler, for reproducible samples.")
    a = p.parse_args()
    main(a.model, a.prompt, a.system, a.max_new_tokens, a.temperature, a.seed)


if __name__ == "__main__":
    run_cli("scoreflow.generate", cli)
