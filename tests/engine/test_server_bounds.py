"""No single client can stall the server: a maximal legal body, an oversized one, an idle socket
and a slow header do not delay /health or a normal completion; connections beyond the bound get
503 + Retry-After without a thread each; idle ones are closed; while the model loads the port
answers "loading"."""

import json
import socket
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from scoreflow.engine import Engine
from scoreflow.engine.server import OpenAIServer
from served import ASK, MODEL

pytestmark = pytest.mark.slow
FAST_S = 2.0  # what "answers at once" means here, on 2 busy cores


@pytest.fixture(scope="module")
def engine(default_model, default_tokenizer):
    return Engine(default_model, default_tokenizer, max_batch=4, max_seq_len=2048)  # serve's context: 1 MB bodies


def post_raw(port: int, body: bytes, slices: int = 1, pause_s: float = 0.0) -> tuple[int, float]:
    """POST body in `slices` pieces `pause_s` apart; (status, seconds from the last byte to the reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        step = -(-len(body) // slices)
        for i in range(0, len(body), step):
            time.sleep(pause_s)
            s.sendall(body[i:i + step])
        sent = time.monotonic()
        head = s.recv(65536)
        return int(head.split()[1]), time.monotonic() - sent


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def test_big_bodies_and_idle_clients_do_not_stall_others(engine):
    with OpenAIServer(engine, MODEL) as server:
        limits = server.limits
        maximal = json.dumps({"model": MODEL, "prompt": "\x01" * limits.max_chars}).encode()  # 6 bytes a char
        assert 0.9 * limits.max_body < len(maximal) <= limits.max_body and limits.max_body < 1.1e6
        results = {}
        adversaries = [threading.Thread(target=lambda: results.update(maximal=post_raw(server.port, maximal, 10, 0.1))),
                       threading.Thread(target=lambda: results.update(oversized=post_raw(server.port, b"x" * 15_000_000)))]
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=FAST_S)
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            idle.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more
            for t in adversaries:
                t.start()
            latencies = []
            while any(t.is_alive() for t in adversaries):
                latencies.append(timed(lambda: httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=FAST_S)))
                latencies.append(timed(lambda: client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)))
            for t in adversaries:
                t.join()
        print(f"\n/health and completion latencies under load: max {max(latencies):.2f} s of {len(latencies)}")
        assert max(latencies) < FAST_S and len(latencies) >= 4
        assert results["maximal"][0] == 400 and results["maximal"][1] < FAST_S  # too many tokens, found fast
        assert results["oversized"][0] == 413 and results["oversized"][1] < FAST_S


IDLE_S = 4.0  # long enough that the refusals below happen before it, even on a loaded machine


def test_connection_bound_and_idle_timeout(engine):
    with OpenAIServer(engine, MODEL, max_connections=4, idle_timeout=IDLE_S) as server:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        idle[0].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # a slow header, then silence
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            assert http.get("/health").status_code == 200  # the 4th connection, kept alive
            for _ in range(20):  # the 5th and later: refused at once, no thread each
                with pytest.raises(openai.InternalServerError, match="busy") as busy:
                    OpenAI(base_url=server.base_url, api_key="unused", max_retries=0).models.list()
                assert busy.value.response.headers["Retry-After"] == "1"
            assert threading.active_count() <= threads + 4
            time.sleep(IDLE_S + 1)  # past the idle timeout: the server closed all four
            assert all(s.recv(1) == b"" for s in idle)
        for s in idle:
            s.close()
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").status_code == 200
        assert threading.active_count() <= threads + 1


def test_port_answers_loading_until_the_engine_is_attached(engine):
    with OpenAIServer(None, MODEL) as server:
        r = httpx.get(f"http://127.0.0.1:{server.port}/health")
        assert (r.status_code, r.json(), r.headers["Retry-After"]) == (503, {"status": "loading"}, "1")
        with pytest.raises(openai.InternalServerError, match="loading"):
            OpenAI(base_url=server.base_url, api_key="unused", max_retries=0).chat.completions.create(
                model=MODEL, messages=ASK, max_tokens=2)
        threading.Timer(0.3, server.attach, [engine]).start()
        patient = OpenAI(base_url=server.base_url, api_key="unused", max_retries=3, timeout=60)  # honours Retry-After
        assert patient.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2).choices[0].message.content
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").json() == {"status": "ok"}


OUT_OF_RANGE = [dict(idle_timeout=float("inf")), dict(idle_timeout=float("nan")), dict(idle_timeout=0),
                dict(idle_timeout=86_401), dict(header_timeout=float("inf")), dict(header_timeout=-1),
                dict(max_connections=0), dict(max_connections=4097)]


@pytest.mark.parametrize("setting", OUT_OF_RANGE, ids=lambda d: "=".join(map(str, *d.items())))
def test_settings_out_of_range_are_a_clear_error(setting):
    """A library user hears which setting and range, where a socket timeout would overflow later."""
    (name, value), = setting.items()
    with pytest.raises(ValueError, match=rf"^{name}={value} is out of range: pass"):
        OpenAIServer(None, MODEL, **setting)


def test_the_longest_timeouts_serve():
    """A day, the cap, is a socket timeout that works (inf overflowed and dropped every connection)."""
    with OpenAIServer(None, MODEL, idle_timeout=86_400, header_timeout=86_400) as server:
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").json() == {"status": "loading"}


@pytest.mark.parametrize("max_batch", [0, 1_000_000])
def test_engine_batch_out_of_range_is_a_clear_error(default_model, default_tokenizer, max_batch):
    with pytest.raises(ValueError, match=rf"^max_batch={max_batch} is out of range: pass 1 to 4096"):
        Engine(default_model, default_tokenizer, max_batch=max_batch)
