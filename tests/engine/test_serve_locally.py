"""serve_locally: the embedded model behind our server on loopback for one block, then gone."""

import socket

import httpx

from scoreflow.engine.local import serve_locally
from scoreflow.llama.registry import DEFAULT_MODEL


def test_serves_for_the_block_then_frees_the_port():
    with serve_locally(DEFAULT_MODEL, max_batch=2, max_seq_len=256) as server:
        reply = httpx.post(f"{server.base_url}/chat/completions", timeout=60, json={
            "model": DEFAULT_MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]}).json()
        assert reply["model"] == DEFAULT_MODEL and reply["usage"]["completion_tokens"] >= 1
        assert server.engine.tokenizer.decode(server.engine.tokenizer.encode("hi")) == "hi"  # model and tokenizer served
        port = server.port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing answers there any more
