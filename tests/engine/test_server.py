"""The OpenAI-compatible server over real loopback HTTP, driven by the official `openai` client,
on the real default model: results equal the engine's own, streams equal non-streamed replies,
64 concurrent requests are batched, hang-ups free slots. (Fixtures: conftest.py.)"""

import asyncio
import http.client
import json
import socket
import time
from collections import defaultdict

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from scoreflow.engine import SamplingParams
from scoreflow.engine.server import OpenAIServer
from served import ASK, MODEL, wait_idle

pytestmark = pytest.mark.slow
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


def test_chat_greedy_equals_engine_generate(client, engine, default_tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12)
    want = engine.generate([default_tokenizer.apply_chat_template(ASK)], SamplingParams(max_tokens=12))[0]
    choice = r.choices[0]
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant", want.text)
    assert choice.finish_reason == want.finish_reason and choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, len(want.token_ids))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-") and r.created > 0


def test_chat_logprobs_and_harmless_fields(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3,
        user="u1", presence_penalty=0, frequency_penalty=0, response_format={"type": "text"},
        parallel_tool_calls=False, store=False, metadata={"run": "test"}, seed=1)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for t in content:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 3 and t.token == t.top_logprobs[0].token
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob) and t.logprob <= 0
        assert bytes(t.bytes).decode() == t.token
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_completions_several_prompts_n_and_logprobs(client, default_tokenizer):
    ids = default_tokenizer.encode("Once upon a time")
    kwargs = dict(model=MODEL, prompt=["The capital of France is", ids], n=2, temperature=0.8, seed=7,
                  max_tokens=6, logprobs=3)
    r = client.completions.create(**kwargs)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        lp = c.logprobs
        assert 1 <= len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(len(top) <= 3 for top in lp.top_logprobs) and all(x <= 0 for x in lp.token_logprobs)
        assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)
    prompt_tokens = len(default_tokenizer.encode("The capital of France is", add_special_tokens=True)) + len(ids)
    assert r.usage.prompt_tokens == prompt_tokens
    again = client.completions.create(**kwargs)  # seeded: reproducible
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_stream_chat_n2_equals_greedy_reply(client, engine, default_tokenizer):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=10, n=2,
                                            stream=True, stream_options={"include_usage": True})
    texts, finish, roles, usage = defaultdict(str), {}, set(), None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles |= {c.index} if c.delta.role == "assistant" else set()
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    want = engine.generate([default_tokenizer.apply_chat_template(ASK)], SamplingParams(max_tokens=10))[0]
    assert dict(texts) == {0: want.text, 1: want.text} and roles == {0, 1}
    assert finish == {0: want.finish_reason, 1: want.finish_reason}
    assert usage.completion_tokens == 2 * len(want.token_ids) and usage.prompt_tokens == want.prompt_tokens


def test_stream_completions_with_logprobs_equals_reply(client):
    kwargs = dict(model=MODEL, prompt="def add(a, b):", temperature=0, max_tokens=10, logprobs=2)
    full = client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kwargs, stream=True)]
    assert "".join(c.text for c in chunks) == full.text
    assert [t for c in chunks for t in c.logprobs.tokens] == full.logprobs.tokens
    assert [o for c in chunks for o in c.logprobs.text_offset] == full.logprobs.text_offset
    assert chunks[-1].finish_reason == full.finish_reason and all(c.finish_reason is None for c in chunks[:-1])


def test_keep_alive_across_stream_and_plain_replies(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    events = resp.read().decode()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Type") == "text/event-stream" and events.endswith("data: [DONE]\n\n")
    assert all(e.startswith("data: ") for e in events.strip().split("\n\n"))
    sock = conn.sock
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read()) == {"status": "ok"} and conn.sock is sock
    conn.close()


def test_http10_stream_is_close_delimited(server):
    """RFC 9112 §6.1: no chunked encoding for HTTP/1.0; the body ends where the connection does."""
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = b"".join(iter(lambda: s.recv(65536), b""))  # until the server closes
    head, _, stream = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding" not in head, head
    assert b"Connection: close" in head and stream.startswith(b"data: {") and stream.endswith(b"data: [DONE]\n\n")
    events = [json.loads(e.removeprefix(b"data: ")) for e in stream.split(b"\n\n")[:-2]]
    assert events and all(e["object"] == "text_completion" for e in events), stream


def test_64_concurrent_requests_are_batched(server, client):
    prompts = [f"Fact {i}:" for i in range(64)]  # short prompts: the test measures decode batching
    kwargs = dict(model=MODEL, temperature=0, max_tokens=8)

    async def concurrently():
        async with AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(c.completions.create(prompt=p, **kwargs) for p in prompts))

    t0 = time.perf_counter()
    together = asyncio.run(concurrently())
    t_together = time.perf_counter() - t0
    every = 8  # the one-by-one baseline on every 8th prompt: 8 requests, their time x8
    t0 = time.perf_counter()
    one_by_one = [client.completions.create(prompt=p, **kwargs) for p in prompts[::every]]
    t_sequential = every * (time.perf_counter() - t0)
    speedup = t_sequential / t_together
    print(f"\n64 requests x 8 tokens: concurrent {t_together:.2f} s, sequential {t_sequential:.2f} s "
          f"({len(one_by_one)} timed, x{every}), speed-up {speedup:.2f}x")
    assert len(together) == 64 and all(r.choices[0].finish_reason in ("stop", "length") for r in together)
    assert all(r.usage.completion_tokens >= 1 for r in together)
    same = sum(a.choices[0].text == b.choices[0].text for a, b in zip(together[::every], one_by_one))
    assert same >= len(one_by_one) - 1, \
        f"only {same}/{len(one_by_one)} greedy replies agree between batched and one-by-one decoding"
    assert speedup > 1.5


def test_stream_hang_up_frees_slots(client, engine):
    stream = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=400, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks), next(chunks)
    assert engine._running, "the story should still be generating"
    stream.close()
    assert wait_idle(engine, 10.0)


def test_hang_up_while_waiting_for_reply_frees_slots(server, engine):
    body = json.dumps({"model": MODEL, "messages": STORY, "temperature": 0, "max_tokens": 400}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while not engine._running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._running, "the request never started"
    assert wait_idle(engine, 10.0)


def test_models_health_and_api_key(server, client, engine):
    assert [(m.id, m.object) for m in client.models.list()] == [(MODEL, "model")]
    with OpenAIServer(engine, "keyed", api_key="sekrit") as keyed:
        good = OpenAI(base_url=keyed.base_url, api_key="sekrit", max_retries=0, timeout=60)
        assert [m.id for m in good.models.list()] == ["keyed"]
        assert good.completions.create(model="keyed", prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError, match="api-key"):
            OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0).models.list()
        r = httpx.post(f"{keyed.base_url}/completions", json={"model": "keyed", "prompt": "Hi"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"http://127.0.0.1:{keyed.port}/health").json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{keyed.port}/health")
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text  # the engine still runs
