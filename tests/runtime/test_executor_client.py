"""ExecutorClient end to end against a real loopback server with scripted faults."""

import asyncio
import json
import socket
import time

import pytest

from scoreflow.executor import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    EmptyReplyError,
    ExecutorClient,
    ExecutorError,
    MalformedReplyError,
    NotFoundError,
    RateLimitError,
)
from scoreflow.executor.client import BAD_REPLY_RETRIES
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
FAST = dict(api_key="sk-test", backoff_s=0.01, max_backoff_s=0.05, timeout=5.0)


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def make_client(server, model="gpt-4o-mini", **options) -> ExecutorClient:
    return ExecutorClient(options.pop("base_url", server.base_url), model, **{**FAST, **options})


def ask(server, chat_options=None, **client_options):
    """One chat() call on a fresh client: (result or the ExecutorError raised, usage)."""
    async def main():
        async with make_client(server, **client_options) as client:
            try:
                return await client.chat(MESSAGES, **(chat_options or {})), client.usage
            except ExecutorError as e:
                return e, client.usage

    return asyncio.run(main())


def test_reply_parsed_and_request_well_formed(server):
    result, usage = ask(server)
    assert (result.text, result.finish_reason, result.cached) == ("echo: 2+2?", "stop", False)
    assert (result.prompt_tokens, result.completion_tokens) == (10, 5)
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.0, "n": 1}
    assert (usage.requests, usage.retries, usage.errors) == (1, 0, 0)


def test_optional_params_and_n_choices(server):
    result, _ = ask(server, dict(n=3, max_tokens=64, stop=["\n"], seed=7, top_p=0.9, temperature=0.8))
    assert result.texts == ("echo: 2+2?",) * 3
    assert {k: server.requests[0].body[k] for k in ("n", "max_tokens", "stop", "seed", "top_p", "temperature")} \
        == dict(n=3, max_tokens=64, stop=["\n"], seed=7, top_p=0.9, temperature=0.8)


def test_api_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    ask(server, api_key=None)
    monkeypatch.delenv("OPENAI_API_KEY")
    ask(server, api_key=None)  # local servers need no key: none is sent
    assert server.requests[0].headers["authorization"] == "Bearer sk-env"
    assert "authorization" not in server.requests[1].headers


def test_429_waits_for_retry_after(server):
    server.script(Reply(429, headers={"Retry-After": "1"}))
    result, usage = ask(server)
    assert result.text == "echo: 2+2?" and server.request_count == 2 and usage.retries == 1
    assert server.requests[1].arrived - server.requests[0].arrived >= 1.0


@pytest.mark.parametrize("fault", [Reply(500), Reply(502), Reply(drop=True)], ids=["500", "502", "dropped_connection"])
def test_transient_fault_then_success(server, fault):
    server.script(fault)
    result, usage = ask(server)
    assert result.text == "echo: 2+2?", result
    assert server.request_count == 2 and (usage.requests, usage.retries, usage.errors) == (2, 1, 0)


def test_stall_past_the_timeout_is_cut_and_retried(server):
    server.script(Reply(delay_s=10.0))
    start = time.monotonic()
    result, usage = ask(server, timeout=1.0)
    assert result.text == "echo: 2+2?" and server.request_count == 2 and usage.retries == 1
    assert time.monotonic() - start < 5.0  # cut at the timeout, not waited out


@pytest.mark.parametrize("body, error", [
    (b"<html>502 Bad Gateway</html>", MalformedReplyError),
    ([1, 2], MalformedReplyError),
    ({"choices": []}, MalformedReplyError),
    ({"choices": [{"text": "legacy completion"}]}, MalformedReplyError),
    (completion(""), EmptyReplyError),
    (completion("  \n"), EmptyReplyError),
    (completion("", finish_reason="length"), EmptyReplyError),
    ({"choices": [{"message": {"role": "assistant", "content": None}}]}, EmptyReplyError),
])
def test_bad_replies_raise_typed_errors_after_bounded_retries(server, body, error):
    server.script(*[Reply(body=body)] * (BAD_REPLY_RETRIES + 1))
    result, usage = ask(server)
    assert type(result) is error, result
    assert server.request_count == BAD_REPLY_RETRIES + 1 and usage.errors == 1
    if body == completion("", finish_reason="length"):
        assert "raise max_tokens" in str(result)


def test_bad_reply_recovers_on_retry_and_is_still_billed(server):
    server.script(Reply(body=completion("")))
    result, usage = ask(server)
    assert result.text == "echo: 2+2?" and server.request_count == 2
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 10)  # the empty reply cost tokens too


def test_n_mismatch_is_malformed(server):
    server.script(*[Reply(body=completion("only one"))] * (BAD_REPLY_RETRIES + 1))
    result, _ = ask(server, dict(n=2))
    assert isinstance(result, MalformedReplyError) and "n=2" in str(result)


@pytest.mark.parametrize("status, error, advice", [
    (400, BadRequestError, "check the messages"),
    (401, AuthenticationError, "set OPENAI_API_KEY or pass --api-key"),
    (403, AuthenticationError, "may not use model 'gpt-4o-mini'"),
    (404, NotFoundError, "check base_url"),
])
def test_client_errors_fail_fast_with_advice(server, status, error, advice):
    server.script(Reply(status))
    result, usage = ask(server)
    assert type(result) is error and result.status == status
    assert advice in str(result) and f"scripted HTTP {status}" in str(result)  # the server's own words too
    assert server.request_count == 1 and (usage.retries, usage.errors) == (0, 1)


def test_wrong_base_url_gets_a_helpful_404(server):
    result, _ = ask(server, base_url=server.base_url.removesuffix("/v1"))
    assert isinstance(result, NotFoundError) and "usually ends in /v1" in str(result)
    assert server.requests[0].path == "/chat/completions" and server.request_count == 1


@pytest.mark.parametrize("status, error", [(503, APIStatusError), (429, RateLimitError)])
def test_retries_are_bounded(server, status, error):
    server.script(*[Reply(status)] * 10)
    result, usage = ask(server, max_retries=2)
    assert type(result) is error and "attempt 3 of 3" in str(result)
    assert server.request_count == 3 and (usage.requests, usage.retries, usage.errors) == (3, 2, 1)


def test_unreachable_server_is_a_connection_error(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    result, usage = ask(server, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    assert isinstance(result, APIConnectionError) and "check that the server is running" in str(result)
    assert (usage.requests, usage.retries) == (2, 1)


def test_base_url_must_be_http(server):
    with pytest.raises(ValueError, match="http://"):
        ExecutorClient("127.0.0.1:8000/v1", "m")


def test_concurrency_is_limited_at_the_server():
    async def main(server):
        async with make_client(server, max_concurrency=8) as client:
            results = await asyncio.gather(*(client.chat([{"role": "user", "content": f"q{i}"}]) for i in range(200)))
            return results, client.usage

    with FakeOpenAIServer(delay_s=0.01) as server:
        results, usage = asyncio.run(main(server))
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(200)]
    assert 1 < server.max_in_flight <= 8
    assert server.request_count == usage.requests == 200 and usage.errors == 0


def in_scope(server, tmp_path, scope: str, calls: list[dict], concurrent: bool = False):
    """`calls` (chat() keyword options) made in order (or all at once) by a scoped view of a
    fresh client whose cache is in tmp_path: (results, usage)."""
    async def main():
        async with make_client(server, cache_dir=tmp_path) as client:
            run = client.scoped(scope)
            if concurrent:
                return await asyncio.gather(*(run.chat(MESSAGES, **c) for c in calls)), client.usage
            return [await run.chat(MESSAGES, **c) for c in calls], client.usage

    return asyncio.run(main())


def test_a_resumed_run_replays_its_calls_and_nothing_else(server, tmp_path):
    first, _ = in_scope(server, tmp_path, "iter_0/w0/run0", [{}, {"max_tokens": 10}, {"temperature": 0.7}])
    assert server.request_count == 3 and not any(r.cached for r in first)
    again, usage = in_scope(server, tmp_path, "iter_0/w0/run0", [{}, {"max_tokens": 10}, {"temperature": 0.7}])
    assert server.request_count == 3 and all(r.cached for r in again)  # the crashed run's calls, sampled too
    assert [r.texts for r in again] == [r.texts for r in first]
    assert (usage.requests, usage.cache_hits, usage.prompt_tokens, usage.cost_usd) == (0, 3, 0, 0.0)
    in_scope(server, tmp_path, "iter_0/w0/run0", [{"max_tokens": 10}])  # call 0 was another request
    in_scope(server, tmp_path, "iter_0/w0/run0", [{}, {"max_tokens": 10}, {"temperature": 0.7}, {}])
    assert server.request_count == 5  # ... and the 4th call was never made


def test_identical_requests_are_real_requests_in_a_run_across_runs_and_workflows(server, tmp_path):
    """The cache never dedupes: the guide's ScEnsemble of three identical Custom calls costs three
    requests, and so do the paper's 3 runs of a workflow at temperature 0."""
    in_scope(server, tmp_path, "iter_0/w0/run0", [{}, {}, {}])
    assert server.request_count == 3
    for scope in ("iter_0/w0/run1", "iter_0/w1/run0", "iter_1/w0/run0"):
        in_scope(server, tmp_path, scope, [{}])
    assert server.request_count == 6
    ask(server, cache_dir=tmp_path)  # without a scope the cache is not used at all
    ask(server, cache_dir=tmp_path)
    assert server.request_count == 8


def test_a_scoped_view_shares_the_clients_totals(server, tmp_path):
    async def main():
        async with make_client(server, cache_dir=tmp_path) as client:
            for r in range(3):
                await client.scoped(f"w/run{r}").chat(MESSAGES)
            await client.scoped("w/run0").chat(MESSAGES)  # run 0 resumed: a replay
            return client.usage

    usage = asyncio.run(main())
    assert server.request_count == 3 and (usage.requests, usage.cache_hits) == (3, 1)
    assert len([f for f in tmp_path.rglob("*.json")]) == 3


def test_failures_are_not_cached(server, tmp_path):
    server.script(Reply(401))
    with pytest.raises(ExecutorError):
        in_scope(server, tmp_path, "w/run0", [{}])
    (result,), _ = in_scope(server, tmp_path, "w/run0", [{}])
    assert not result.cached and server.request_count == 2


def test_concurrent_calls_of_a_run_are_stored_safely_and_replayed(tmp_path):
    with FakeOpenAIServer(delay_s=0.01) as server:
        results, _ = in_scope(server, tmp_path, "w/run0", [{}] * 20, concurrent=True)
        entries = [f for f in tmp_path.rglob("*") if f.is_file()]
        assert {r.text for r in results} == {"echo: 2+2?"} and server.request_count == 20
        assert len(entries) == 20 and not any(e.name.startswith(".tmp") for e in entries)  # no torn temp files
        assert all(json.loads(e.read_text())["choices"][0]["message"]["content"] == "echo: 2+2?" for e in entries)
        again, _ = in_scope(server, tmp_path, "w/run0", [{}] * 20, concurrent=True)
        assert all(r.cached for r in again) and server.request_count == 20


@pytest.mark.parametrize("model, prices, cost_per_call", [
    ("gpt-4o-mini", None, (1000 * 0.15 + 2000 * 0.60) / 1e6),
    ("gpt-4o-mini-2024-07-18", None, (1000 * 0.15 + 2000 * 0.60) / 1e6),  # dated variant, not gpt-4o
    ("gpt-4o", None, (1000 * 2.50 + 2000 * 10.00) / 1e6),
    ("my-local-llama", None, 0.0),
    ("my-local-llama", {"my-local-llama": (1.0, 3.0)}, (1000 * 1.0 + 2000 * 3.0) / 1e6),
])
def test_usage_and_cost(model, prices, cost_per_call):
    async def main(server):
        async with make_client(server, model=model, prices=prices) as client:
            for _ in range(3):
                await client.chat(MESSAGES)
            return client.usage

    with FakeOpenAIServer(prompt_tokens=1000, completion_tokens=2000) as server:
        usage = asyncio.run(main(server))
    assert usage.as_dict() == dict(requests=3, retries=0, errors=0, cache_hits=0, prompt_tokens=3000,
                                   completion_tokens=6000, cost_usd=pytest.approx(3 * cost_per_call))


def test_fake_server_speaks_the_real_protocol(server):
    """The official openai client accepts the fake's replies, so our client's tests mean something."""
    openai = pytest.importorskip("openai")

    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await client.close()
        return reply

    reply = asyncio.run(main())
    assert reply.choices[0].message.content == "echo: 2+2?" and reply.usage.prompt_tokens == 10
