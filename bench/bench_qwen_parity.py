"""Full parity check of Qwen2.5-Coder-0.5B-Instruct: our conversion vs transformers reading the
same GGUF, CPU fp32. CI runs a small version of it (tests/parity/test_qwen_parity.py: 2 prompts,
16 tokens); this one takes the issue's full measure.

    python bench/bench_qwen_parity.py [--new-tokens 64]

Per chat prompt (the CI test's two, plus three more: code, digits, CJK/emoji, multi-turn):
the relative logits difference max|ours - theirs| / max|theirs| over every position, and the
greedy continuation (EOS ignored) by transformers `generate`, by our engine with all prompts in
one batch, and by our engine one prompt at a time. Then token ids on the tokenizer corpus of the
SmolLM2 tests plus the CI test's code/CRLF/CJK/emoji strings, and on the rendered chat prompts.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from scoreflow.engine import Engine, SamplingParams
from scoreflow.llama import load_model, load_tokenizer
from scoreflow.llama.registry import QWEN_CODER, embedded_gguf
from scoreflow.testing.texts import EXTRA_TEXTS, corpus
from scoreflow.testing.texts import QWEN_PROMPTS as PROMPTS

MORE_PROMPTS = [
    [{"role": "user", "content": "Write a C function that reverses a linked list.\r\nUse\ttabs."}],
    [{"role": "user", "content": "用 Python 写一个函数, 计算 1 到 100 的和 🙂. Then print 3.14159 * 2**10."}],
    [{"role": "system", "content": "You are a terse math tutor."},
     {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in total?"},
     {"role": "assistant", "content": "72"},
     {"role": "user", "content": "And if she sold 3 times as many in June as in May?"}],
]


def oracle():
    import transformers

    transformers.logging.set_verbosity_error()
    gguf = embedded_gguf(QWEN_CODER)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def hf_greedy(model, ids: list[int], new: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, eos_token_id=None, pad_token_id=151643)
    return y[0, len(ids):].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    t = time.perf_counter()
    tok, model = load_tokenizer(QWEN_CODER), load_model(QWEN_CODER, device="cpu")
    hf, hf_tok = oracle()
    print(f"# {QWEN_CODER}: ours vs transformers reading the GGUF, CPU fp32, {torch.get_num_threads()} threads; "
          f"{platform.machine()}, torch {torch.__version__}; models loaded in {time.perf_counter() - t:.0f} s")
    prompts = [tok.encode(tok.apply_chat_template(m)) for m in PROMPTS + MORE_PROMPTS]
    engine = Engine(model, tok, max_batch=len(prompts), max_seq_len=512)
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    batched = [c.token_ids for c in engine.generate(prompts, params)]
    print(f"| prompt | tokens | logits rel. diff | greedy {args.new_tokens}: = transformers, batched | alone |")
    print("|---|---|---|---|---|")
    for i, ids in enumerate(prompts):
        with torch.inference_mode():
            ours, theirs = model(torch.tensor([ids])), hf(torch.tensor([ids])).logits
        rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        want = hf_greedy(hf, ids, args.new_tokens)
        alone = engine.generate([ids], params)[0].token_ids
        print(f"| {i + 1} | {len(ids)} | {rel:.1e} | {batched[i] == want} | {alone == want} |", flush=True)
    texts = corpus() + EXTRA_TEXTS
    same = sum(tok.encode(s) == hf_tok.encode(s, add_special_tokens=False) for s in texts)
    chat_same = sum(ids == hf_tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
                    for ids, m in zip(prompts, PROMPTS + MORE_PROMPTS))
    print(f"\ntoken ids equal on {same}/{len(texts)} corpus strings and {chat_same}/{len(prompts)} chat prompts")


if __name__ == "__main__":
    main()
