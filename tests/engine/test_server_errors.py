"""Malformed requests against the real server: each gets its precise status and an OpenAI error
body whose `param` names the field at fault and whose message gives the allowed range (not an
internal repr); then the same keep-alive connection is still served."""

import http.client
import json
import socket

import httpx
import openai
import pytest

from served import ASK, MODEL, wait_idle

pytestmark = pytest.mark.slow
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MSG = {"model": MODEL, "messages": ASK, "max_tokens": 2}
PROMPT = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
ASSISTANT = {"role": "assistant", "content": "Paris."}


def chat(**fields) -> dict:
    return {**MSG, **fields}


def raw(tail: bytes) -> bytes:
    """A chat body whose last field is written by hand (JSON that json.dumps will not produce)."""
    return json.dumps(MSG).encode()[:-1] + b", " + tail + b"}"


MALFORMED = [  # (method, path, body, status, param)
    ("POST", CHAT, b'{"model": "x", ', 400, None),
    ("POST", CHAT, b"[1, 2]", 400, None),
    ("POST", CHAT, b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None),
    ("POST", CHAT, b"x" * 400_000, 413, None),  # the 512-token context's body cap is ~310 kB
    ("POST", CHAT, raw(b'"seed": ' + b"9" * 5000), 400, "seed"),
    ("POST", CHAT, raw(b'"n": -' + b"1" * 100), 400, "n"),
    ("POST", CHAT, chat(seed=10**30), 400, "seed"),
    ("POST", CHAT, chat(seed=-(2**63) - 1), 400, "seed"),
    ("POST", CHAT, chat(max_tokens=10**25), 400, "max_tokens"),
    ("POST", CHAT, chat(max_completion_tokens=513), 400, "max_completion_tokens"),
    ("POST", CHAT, chat(max_tokens=0), 400, "max_tokens"),
    ("POST", CHAT, chat(max_tokens=True), 400, "max_tokens"),
    ("POST", CHAT, chat(temperature=float("nan")), 400, "temperature"),
    ("POST", CHAT, chat(temperature=float("inf")), 400, "temperature"),
    ("POST", CHAT, raw(b'"temperature": 1e400'), 400, "temperature"),
    ("POST", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("POST", CHAT, chat(temperature=-1), 400, "temperature"),
    ("POST", CHAT, chat(temperature=2.5), 400, "temperature"),
    ("POST", CHAT, chat(top_p=float("-inf")), 400, "top_p"),
    ("POST", CHAT, chat(top_p=0), 400, "top_p"),
    ("POST", CHAT, chat(top_k=-1), 400, "top_k"),
    ("POST", CHAT, chat(n=0), 400, "n"),
    ("POST", CHAT, chat(n=17), 400, "n"),
    ("POST", CHAT, chat(frequency_penalty=float("nan")), 400, "frequency_penalty"),
    ("POST", CHAT, chat(presence_penalty=0.5), 400, "presence_penalty"),
    ("POST", CHAT, chat(logit_bias={"1": 5}), 400, "logit_bias"),
    ("POST", CHAT, chat(response_format={"type": "json_object"}), 400, "response_format"),
    ("POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("POST", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("POST", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("POST", CHAT, chat(stop=[""]), 400, "stop"),
    ("POST", CHAT, chat(user=5), 400, "user"),
    ("POST", CHAT, chat(foo=1), 400, "foo"),
    ("POST", CHAT, chat(stream_options={"include_usage": True}), 400, "stream_options"),
    ("POST", CHAT, chat(tools=[{"type": "function"}]), 400, "tools"),
    ("POST", CHAT, chat(model="gpt-4o"), 404, "model"),
    ("POST", CHAT, chat(messages="hi"), 400, "messages"),
    ("POST", CHAT, chat(messages=[]), 400, "messages"),
    ("POST", CHAT, chat(messages=[5]), 400, "messages[0]"),
    ("POST", CHAT, chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    ("POST", CHAT, chat(messages=[{"role": ["user"], "content": "x"}]), 400, "messages[0].role"),
    ("POST", CHAT, chat(messages=[{"role": "user"}]), 400, "messages[0].content"),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "messages[0].content"),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": "x", "refusal": "no"}]), 400, "messages[0].refusal"),
    ("POST", CHAT, chat(messages=[*ASK, {**ASSISTANT, "tool_calls": [{"id": "1"}]}]), 400, "messages[1].tool_calls"),
    ("POST", CHAT, chat(messages=[*ASK, {**ASSISTANT, "audio": {"id": "a"}}]), 400, "messages[1].audio"),
    ("POST", CHAT, chat(messages=[{"role": "user", "content": "x" * 41_473}]), 400, "messages"),  # > 512 x 81
    ("POST", CHAT, chat(messages=[{"role": "user", "content": "a\ud800b"}]), 400, "messages[0].content"),  # lone
    ("POST", CHAT, chat(messages=[*ASK, {**ASSISTANT, "content": [{"type": "text", "text": "\udc00"}]}]), 400,
     "messages[1].content"),
    ("POST", CHAT, chat(stop="x\udbff"), 400, "stop"),
    ("POST", CHAT, chat(stop=["x", "\udfff"]), 400, "stop[1]"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": "a\ud800b"}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": ["ok", "a\ud800"]}, 400, "prompt[1]"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": "word " * 600}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": [10**9]}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": []}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": [[1]] * 17}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "prompt": ["a", "b", "c"], "n": 8}, 400, "prompt"),
    ("POST", COMPLETIONS, {**PROMPT, "logprobs": 21}, 400, "logprobs"),
    ("GET", "/v1/nope", None, 404, None),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "x"}, 404, None),
    ("GET", CHAT, None, 404, None),
    ("DELETE", "/v1/models", None, 405, None),
    ("PUT", CHAT, chat(), 405, None),
]


def test_malformed_requests_get_status_and_param_then_server_serves(server, client, engine):
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as http:
        for method, path, body, status, param in MALFORMED:
            content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            r = http.request(method, path, content=content, headers={"Content-Type": "application/json"})
            case = (method, path, content[:80] if content else None, r.text[:300])
            assert r.status_code == status, case
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param, case
            assert "SamplingParams" not in error["message"] and (param or "") in error["message"], case
            if error["code"] == "invalid_value" and param != "stop":  # range errors say what is allowed
                assert " in [" in error["message"] or " in (" in error["message"] or ">=" in error["message"], case
        assert len(MALFORMED) >= 30 and wait_idle(engine, 1.0)  # no refused request left work behind
        assert http.get("/health").json() == {"status": "ok"}  # same keep-alive client, still served
        r = http.post(COMPLETIONS, json={**PROMPT, "top_k": 10**30})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1  # = top_k off
    with pytest.raises(openai.BadRequestError, match=r"temperature must be in \[0, 2\]") as bad:
        client.chat.completions.create(model=MODEL, messages=ASK, temperature=-1)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError, match="gpt-4o") as missing:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert missing.value.code == "model_not_found"
    assert client.chat.completions.create(**MSG).choices[0].message.content


def test_http_level_errors_are_json(server):
    """Errors the stdlib raises itself, HEAD (405 without a body) and a body without length."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("HEAD", "/health")
    r = conn.getresponse()
    assert (r.status, r.getheader("Allow"), r.getheader("Content-Type"), r.read()) == (405, "GET, POST",
                                                                                      "application/json", b"")
    conn.request("GET", "/health")  # the HEAD reply had no body: the connection is in step
    assert json.loads(conn.getresponse().read()) == {"status": "ok"}
    conn.putrequest("POST", CHAT)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders(b"0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 411 and json.loads(r.read())["error"]["code"] == "invalid_length"
    conn.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"NOT A REQUEST LINE AT ALL\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["type"] == "invalid_request_error"
