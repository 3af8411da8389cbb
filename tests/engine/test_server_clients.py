"""What real client code does, end to end over loopback: a multi-turn conversation that appends
each reply with `message.model_dump()` (sync and async official client), role developer,
temperatures too small for float32 (greedy), a client that half-closes after its request, and
a model gone NaN (a 500 that names the cause, never garbage tokens)."""

import asyncio
import http.client
import json
import socket

import openai
import pytest
import torch
from openai import AsyncOpenAI, OpenAI

from scoreflow.engine import Engine, SamplingParams
from scoreflow.engine.sampling import sample
from scoreflow.engine.server import OpenAIServer
from scoreflow.llama import LlamaConfig, Transformer
from served import ASK, MODEL

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "And of Italy?", "Which of the two is larger?"]
SYSTEM = {"role": "developer", "content": "Answer in one short sentence."}


def greedy(engine: Engine, tokenizer, messages: list[dict], max_tokens: int) -> str:
    """The engine's own greedy reply to the conversation (developer as system)."""
    turns = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]
    return engine.generate([tokenizer.apply_chat_template(turns)], SamplingParams(max_tokens=max_tokens))[0].text


def test_three_turns_appending_model_dump_sync_and_async(server, client, engine, default_tokenizer):
    kwargs = dict(model=MODEL, temperature=0, max_tokens=8)
    messages = [SYSTEM]
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        messages.append(client.chat.completions.create(messages=messages, **kwargs).choices[0].message.model_dump())
    assert {"refusal", "tool_calls", "annotations", "audio", "function_call"} <= set(messages[2])  # what we test
    assert messages[-1]["content"] == greedy(engine, default_tokenizer, messages[:-1], 8)

    async def converse() -> list[dict]:
        async with AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
            history = [SYSTEM]
            for question in QUESTIONS:
                history.append({"role": "user", "content": question})
                reply = await c.chat.completions.create(messages=history, **kwargs)
                history.append(reply.choices[0].message.model_dump())
            return history

    assert asyncio.run(converse()) == messages


@pytest.mark.parametrize("temperature", [1e-50, 1e-6, 0])
def test_tiny_temperatures_are_greedy(client, engine, default_tokenizer, temperature):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=temperature, max_tokens=10, seed=3)
    assert r.choices[0].message.content == greedy(engine, default_tokenizer, ASK, 10)


def test_sampler_refuses_non_finite_numbers():
    logits = torch.randn(2, 50)
    params = [SamplingParams(temperature=1e-50), SamplingParams(temperature=0.7)]
    assert sample(logits, params, [1, 2], [0, 0])[0] == logits[0].argmax()
    logits[1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        sample(logits, params, [1, 2], [0, 0])


def test_half_closed_client_still_gets_its_reply(server, engine, default_tokenizer):
    """The client shuts its sending side after the request (as `curl --data @- ... < file` or
    a proxy may) and reads on: EOF is not a hang-up."""
    body = json.dumps({"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": 24})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    conn.sock.shutdown(socket.SHUT_WR)
    r = conn.getresponse()
    assert r.status == 200
    assert json.loads(r.read())["choices"][0]["message"]["content"] == greedy(engine, default_tokenizer, ASK, 24)
    conn.close()


def test_model_gone_nan_fails_the_request_with_500_naming_the_cause(default_tokenizer):
    cfg = LlamaConfig(vocab_size=default_tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
    net = Transformer(cfg).eval()
    with torch.no_grad():
        net.lm_head.weight.fill_(float("nan"))
    with OpenAIServer(Engine(net, default_tokenizer, max_batch=2, max_seq_len=64), "nan") as s:
        c = OpenAI(base_url=s.base_url, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError, match="logits are not finite") as failed:
            c.completions.create(model="nan", prompt="Hi", max_tokens=2, temperature=0)
    assert failed.value.code == "engine_error"
