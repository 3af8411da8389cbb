"""HTTP framing against the real server over loopback: a request whose body length is in doubt
(Transfer-Encoding, two or malformed Content-Length headers, a header line that did not parse)
gets one 4xx/501 and the connection closes, so a request smuggled in its body is never answered;
a request head trickled past the header deadline gets 408. None of these needs a model: the
checks come before the route's "loading" 503. (An HTTP/1.0 stream's framing: test_server.py.)"""

import json
import select
import socket
import time

import pytest

from scoreflow.engine.server import OpenAIServer
from served import MODEL

SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b'{"prompt": "Hi"}'


@pytest.fixture(scope="module")
def loading():
    """A server without an engine: its framing checks come before the route's "loading" 503."""
    with OpenAIServer(None, MODEL, header_timeout=0.5) as s:
        yield s


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send data on a fresh connection, read until the server closes it (a timeout fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        return b"".join(iter(lambda: s.recv(65536), b""))


def post(headers: list[str], body: bytes) -> bytes:
    """A POST with these framing headers, the chunked form of `body` and a smuggled GET after it."""
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = "".join(f"{h}\r\n" for h in ["POST /v1/completions HTTP/1.1", "Host: x", *headers])
    return head.encode() + b"\r\n" + chunked + SMUGGLED


DOUBTFUL = [  # (framing headers, status)
    (["Transfer-Encoding: chunked", "Content-Length: 5"], 400),
    (["Content-Length: 5", "Transfer-Encoding: chunked"], 400),
    (["Content-Length: 26", "Content-Length: 26"], 400),
    (["Content-Length: 26", "Content-Length: 5"], 400),
    (["Content-Length: +26"], 400),
    (["Content-Length: 0x1a"], 400),
    (["Content-Length:  2 6"], 400),
    (["Content-Length: 26", " 6"], 400),  # an obsolete line folding: "26 6"
    (["Content-Length: " + "9" * 20], 400),
    (["Content-Length: -26"], 400),
    (["Content-Length : 26"], 400),  # not a header line: the stdlib's parser would drop the rest
    (["Transfer-Encoding: chunked"], 411),
    (["Transfer-Encoding: gzip, chunked"], 501),
    (["Transfer-Encoding: chunked, chunked"], 501),
    (["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], 501),
    (["Transfer-Encoding: identity"], 501),
]


@pytest.mark.parametrize("headers, status", DOUBTFUL, ids=[" | ".join(h) for h, _ in DOUBTFUL])
def test_doubtful_framing_gets_one_answer_and_the_connection_closes(loading, headers, status):
    reply = exchange(loading.port, post(headers, BODY))
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the smuggled GET /health was never answered
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in head, reply
    assert json.loads(body)["error"]["message"]


def test_sound_framing_keeps_the_connection(loading):
    """The control: one plain Content-Length, then a second request on the same connection."""
    health = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    reply = exchange(loading.port, health + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 503 ") == 2 and reply.count(b'"loading"') == 2, reply


def trickle(port: int, prefix: bytes, head: bytes, pause_s: float) -> tuple[bytes, float]:
    """Send prefix, then head a byte every pause_s until the server answers; (all it sent before
    closing, seconds from the prefix)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(prefix)
        for byte in head:
            if select.select([s], [], [], pause_s)[0]:
                break
            s.sendall(bytes([byte]))
        return b"".join(iter(lambda: s.recv(65536), b"")), time.monotonic() - t0


@pytest.mark.parametrize("prefix", [b"", b"GET /health HTTP/1.1\r\n"], ids=["request line", "headers"])
def test_a_trickled_head_gets_408_at_the_header_deadline(loading, prefix):
    """header_timeout=0.5 s: a byte every 0.05 s keeps every read under the idle timeout (60 s)
    but not the head under its deadline."""
    head = (b"" if prefix else b"GET /health HTTP/1.1\r\n") + b"Host: x\r\n" * 40 + b"\r\n"
    reply, elapsed = trickle(loading.port, prefix, head, 0.05)
    assert reply.startswith(b"HTTP/1.1 408 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["message"].startswith("the request head took")
    assert 0.45 < elapsed < 3.0, elapsed


def test_the_deadline_starts_at_a_heads_first_byte(loading):
    """A head trickled within the deadline is served, and a keep-alive connection may wait longer
    than the deadline between requests."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", loading.port), timeout=10) as s:
        for _ in range(2):
            for i in range(0, len(head), 4):
                s.sendall(head[i:i + 4])
                time.sleep(0.01)  # about 0.1 s for the whole head
            reply = s.recv(65536)
            assert reply.startswith(b"HTTP/1.1 503 ") and b'"loading"' in reply, reply
            time.sleep(0.8)  # idle between requests: longer than the deadline
