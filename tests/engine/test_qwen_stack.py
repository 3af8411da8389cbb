"""The engine and the OpenAI server on Qwen2.5-Coder-0.5B-Instruct (untied 151,936-token head,
q/k/v biases): prefix sharing, seeded top-p, stop strings and EOS, shared-prefix decode, chat
completions plain and streamed from `python -m scoreflow.serve`."""

import signal
import subprocess
import sys

import pytest
from openai import OpenAI

import scoreflow.engine.attention_plans as plans
from scoreflow.engine import Engine, SamplingParams
from scoreflow.llama.registry import QWEN_CODER
from scoreflow.testing.texts import as_ids

pytestmark = pytest.mark.slow

CODE = [{"role": "user", "content": "Write a Python function is_prime(n). Code only."}]
SUM = [{"role": "user", "content": "What is 12 * 7? Reply with the number only."}]
STORY = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def engine(qwen_model, qwen_tokenizer):
    return Engine(qwen_model, qwen_tokenizer, max_batch=4, max_seq_len=512)


def test_prefix_sharing_and_seeded_top_p(engine, qwen_tokenizer):
    """n greedy rows forked from one prefill equal the single greedy completion; a seeded top-p
    sample is the same alone and next to another prompt, and n samples differ."""
    code, total = as_ids(qwen_tokenizer, CODE), as_ids(qwen_tokenizer, SUM)
    single = engine.generate([code], SamplingParams(max_tokens=10))[0]
    assert [c.token_ids for c in engine.generate([code], SamplingParams(n=3, max_tokens=10))] == [single.token_ids] * 3
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=5)
    alone = engine.generate([code], p)[0].token_ids
    assert engine.generate([total, code], p)[1].token_ids == alone
    sampled = engine.generate([as_ids(qwen_tokenizer, STORY)], SamplingParams(n=4, temperature=1.0, top_p=0.95,
                                                                             max_tokens=8, seed=7))
    assert len({tuple(c.token_ids) for c in sampled}) > 1


def test_stop_strings_and_eos(engine, qwen_tokenizer):
    full = engine.generate([as_ids(qwen_tokenizer, CODE)], SamplingParams(max_tokens=24))[0]
    stop = full.text[12:16]  # 4 characters, likely across a token boundary
    cut = engine.generate([as_ids(qwen_tokenizer, CODE)], SamplingParams(max_tokens=24, stop=[stop, "@@never@@"]))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    answer = engine.generate([as_ids(qwen_tokenizer, SUM)], SamplingParams(max_tokens=16))[0]
    assert (answer.finish_reason, answer.text.strip()) == ("stop", "84")  # <|im_end|> ends it, unprinted


def test_shared_prefix_decode_equals_each_prompt_alone(engine, qwen_tokenizer, monkeypatch):
    calls = []
    real = plans.shared_prefix_attention
    monkeypatch.setattr(plans, "shared_prefix_attention", lambda *a: calls.append(a[1].shape[1]) or real(*a))
    system = "You are a careful Python programmer who writes short, correct code. " * 6
    prompts = [as_ids(qwen_tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": q}])
               for q in ("Reverse a string.", "Sum a list.")]
    together = engine.generate(prompts, SamplingParams(n=2, max_tokens=8, ignore_eos=True))
    assert calls and min(calls) >= 64
    alone = [engine.generate([ids], SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids for ids in prompts]
    assert [c.token_ids for c in together] == [alone[0]] * 2 + [alone[1]] * 2


def test_cli_server_replies_equal_engine(engine, qwen_tokenizer):
    """`python -m scoreflow.serve --model qwen2.5-coder-0.5b-instruct`, in its own process (an
    engine's worker thread keeps its model alive for good): greedy chat, plain and streamed, equals
    our engine's reply."""
    proc = subprocess.Popen([sys.executable, "-m", "scoreflow.serve", "--model", QWEN_CODER, "--port", "0",
                             "--max-batch", "2", "--max-seq-len", "512"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split("listening on ")[1].split(";")[0]
        assert f"serving {QWEN_CODER!r} at {url}" in proc.stdout.readline()  # once the model is loaded
        client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        r = client.chat.completions.create(model=QWEN_CODER, messages=SUM, temperature=0, max_tokens=8)
        stream = client.chat.completions.create(model=QWEN_CODER, messages=SUM, temperature=0, max_tokens=8,
                                                stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    want = engine.generate([qwen_tokenizer.apply_chat_template(SUM)], SamplingParams(max_tokens=8))[0]
    assert r.choices[0].message.content == streamed == want.text
    assert r.usage.prompt_tokens == len(as_ids(qwen_tokenizer, SUM))
