"""`python -m scoreflow.generate`: a greedy chat completion from a local model, streamed to stdout.

    python -m scoreflow.generate --prompt "What is 7 * 8?" --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import torch

from .engine.kv_cache import KVCache
from .llama import DEFAULT_MODEL, load_model, load_tokenizer


@torch.inference_mode()
def greedy_tokens(model, prompt_ids: list[int], max_new_tokens: int, stop_ids=()) -> Iterator[int]:
    """Yield greedy next tokens one at a time (prefill once, then one cached step per token)."""
    cache = KVCache.for_model(model, batch=1, max_len=len(prompt_ids) + max_new_tokens)
    x = torch.tensor([prompt_ids], device=model.embed_tokens.weight.device)
    for _ in range(max_new_tokens):
        nxt = model(x, cache=cache)[0, -1].argmax()
        token = int(nxt)
        if token in stop_ids:
            return
        yield token
        x = nxt.view(1, 1)


def main(model: str = DEFAULT_MODEL, prompt: str = "", system: str | None = None,
         max_new_tokens: int = 128) -> str:
    tok, net = load_tokenizer(model), load_model(model)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    ids = tok.encode(tok.apply_chat_template(messages))
    out: list[int] = []
    printed, t0 = "", time.perf_counter()
    for token in greedy_tokens(net, ids, max_new_tokens, tok.eos_token_ids):
        out.append(token)
        text = tok.decode(out, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    dt = time.perf_counter() - t0
    print(f"\n[{len(out)} tokens in {dt:.1f}s, {len(out) / max(dt, 1e-9):.1f} tok/s]", file=sys.stderr)
    return printed


def cli() -> None:
    p = argparse.ArgumentParser(description="Greedy chat completion from a local Llama-family model")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model directory or known name")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    a = p.parse_args()
    main(a.model, a.prompt, a.system, a.max_new_tokens)


if __name__ == "__main__":
    cli()
