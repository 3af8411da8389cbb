"""Soak `python -m scoreflow.serve` (a subprocess on loopback) with a fixed mix of well-formed,
malformed, smuggling, oversized, idle, slow-header and hanging-up clients, and report latency,
errors, RSS, threads, free connection slots at the end and the exit status on SIGTERM.

    python bench/soak_server.py --minutes 15        # the soak recorded in RESULTS.md
    python bench/soak_server.py --minutes 2         # a quick validation run

Clients, all on 127.0.0.1, their number fixed (--well-formed, --idle):
  well-formed  official `openai` client, no retries: chat, streamed chat, legacy completion, and a
               two-turn chat that appends the reply with model_dump(); temperature 0 or 0.8
  malformed    one keep-alive httpx client cycling through bad requests (lone surrogates in the
               fields that reach the tokenizer among them); each must be a 4xx
  smuggling    raw sockets with doubtful framing (Transfer-Encoding and Content-Length, two or
               malformed Content-Length headers, other codings) and a request hidden in the
               body: each must get its one expected 4xx/501, then the connection closes
  oversized    a 15 MB body (413) and a maximal legal one, ~1 MB of escapes (400), every 5 s
  idle         sockets held silent or stopped mid-header; reopened when the server closes them
               (--idle-timeout), so the server keeps paying for them
  slow header  sockets (--slow-headers) trickling a request head a byte every 0.5 s: each must get
               408 at the server's header deadline (HEADER_TIMEOUT_S) and be closed; then a fresh one
  hang-up      starts a long stream, reads three chunks, disconnects
Every 5 s the server's RSS and thread count are read from /proc. At the end, once the clients
have closed, --max-connections connections are opened at once: each must be served (no slot
leaked); then SIGTERM must stop the server with exit status 0. Exit status 1 when a 5xx, a failed
well-formed request or an adversarial client answered otherwise than expected was seen, the
thread count passed --max-connections + 8, RSS grew by more than 10% from the end of the first
quarter (after warm-up) to the end, a slot was not free at the end, or the server's exit status
was not 0. (The 501 that an unsupported Transfer-Encoding asks for is expected, not a 5xx.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import IO

import httpx
import openai
from openai import OpenAI

from scoreflow.engine.bounded_http import LINGER_S
from scoreflow.engine.server import HEADER_TIMEOUT_S  # `serve` runs with the default

MODEL = "smollm2-135m-instruct"
QUESTIONS = ["What is 2 + 3?", "Name a colour.", "What is the capital of France?", "Say hello.",
             "Write a haiku about rain.", "Count to five."]
CHAT, COMPLETIONS = "/chat/completions", "/completions"
MALFORMED = [(CHAT, body) for body in [
    b'{"model": ', b"[1]", b'{"metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e400}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": 0}',
    b'{"messages": [{"role": "user", "content": "x"}], "model": "gpt-4o"}',
    b'{"messages": [{"role": "tool", "content": "x"}]}', b'{"messages": "hi"}',
    b'{"messages": [{"role": "user", "content": "x"}], "foo": 1}',
    b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',  # lone surrogates: a 400, not the tokenizer's 500
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "stop": ["x", "\\udfff"]}']] + [(COMPLETIONS, body) for body in [
    b'{"prompt": "a\\ud800b"}', b'{"prompt": ["ok", "\\udbff"]}']]
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # hidden in each body below: never to be answered
SMUGGLING = [  # (framing headers, the expected status)
    (["Transfer-Encoding: chunked", "Content-Length: 5"], 400), (["Content-Length: 5", "Content-Length: 30"], 400),
    (["Content-Length: 30", "Content-Length: 30"], 400), (["Content-Length: +30"], 400),
    (["Content-Length: 0x1e"], 400), (["Content-Length: 3 0"], 400), (["Content-Length: " + "9" * 20], 400),
    (["Content-Length: -30"], 400), (["Content-Length : 30"], 400), (["Transfer-Encoding: chunked"], 411),
    (["Transfer-Encoding: gzip, chunked"], 501), (["Transfer-Encoding: chunked, chunked"], 501)]
MAXIMAL_CHARS = 160_000  # just under 2048 tokens x 81 bytes (serve's default context, SmolLM2's longest token)


class Stats:
    """Thread-safe tallies: latencies of well-formed requests, statuses per client kind, failures."""

    def __init__(self):
        self.lock, self.latencies, self.counts, self.failures = threading.Lock(), [], Counter(), []

    def add(self, kind: str, outcome: str, latency: float | None = None, failure: str | None = None) -> None:
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if latency is not None:
                self.latencies.append(latency)
            if failure is not None and len(self.failures) < 20:
                self.failures.append(f"{kind}: {failure}"[:300])


def well_formed(base_url: str, stats: Stats, stop: threading.Event, seed: int) -> None:
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as client:
        well_formed_requests(client, stats, stop, random.Random(seed))


def well_formed_requests(client: OpenAI, stats: Stats, stop: threading.Event, rng: random.Random) -> None:
    while not stop.is_set():
        kind = rng.choice(["chat", "stream", "completion", "two-turn"])
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        args = dict(model=MODEL, max_tokens=rng.randint(4, 32), temperature=rng.choice([0, 0.8]), seed=rng.randint(0, 99))
        t0 = time.monotonic()
        try:
            if kind == "chat":
                client.chat.completions.create(messages=messages, **args)
            elif kind == "stream":
                for _ in client.chat.completions.create(messages=messages, stream=True, **args):
                    pass
            elif kind == "completion":
                client.completions.create(prompt=messages[0]["content"], **args)
            else:
                messages.append(client.chat.completions.create(messages=messages, **args).choices[0].message.model_dump())
                messages.append({"role": "user", "content": "Say it again."})
                client.chat.completions.create(messages=messages, **args)
            stats.add("well-formed", "ok", time.monotonic() - t0)
        except openai.APIStatusError as e:
            stats.add("well-formed", f"{e.status_code}", failure=str(e))
        except openai.APIConnectionError as e:
            stats.add("well-formed", "connection error", failure=repr(e.__cause__ or e))


def malformed(base_url: str, stats: Stats, stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for i in itertools.count():
            if stop.is_set():
                return
            path, body = MALFORMED[i % len(MALFORMED)]
            try:
                r = http.post(path, content=body, headers={"Content-Type": "application/json"})
                stats.add("malformed", str(r.status_code), failure=None if r.status_code < 500 else r.text)
            except httpx.HTTPError as e:
                stats.add("malformed", "connection error", failure=repr(e))
            stop.wait(0.05)


def oversized(base_url: str, stats: Stats, stop: threading.Event) -> None:
    bodies = {"15 MB": b"x" * 15_000_000,
              "maximal": json.dumps({"model": MODEL, "prompt": "\x01" * MAXIMAL_CHARS}).encode()}
    while not stop.wait(5.0):
        for name, body in bodies.items():
            try:
                r = httpx.post(f"{base_url}/completions", content=body, timeout=60)
                stats.add(f"oversized {name}", str(r.status_code), failure=None if r.status_code < 500 else r.text)
            except httpx.HTTPError as e:
                stats.add(f"oversized {name}", "connection error", failure=repr(e))


def smuggling(port: int, stats: Stats, stop: threading.Event) -> None:
    """Doubtful framing with a request hidden in the body: one answer, the expected status, then EOF."""
    body = b'{"prompt": "x"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + SMUGGLED
    for i in itertools.count():
        if stop.wait(0.05):
            return
        headers, status = SMUGGLING[i % len(SMUGGLING)]
        head = "".join(f"{h}\r\n" for h in ["POST /v1/completions HTTP/1.1", "Host: x", *headers]) + "\r\n"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(head.encode() + chunked)
                reply = b"".join(iter(lambda: s.recv(65536), b""))
        except OSError as e:
            stats.add("smuggling", "connection error", failure=repr(e))
            continue
        answers, got = reply.count(b"HTTP/1.1 "), reply[9:12].decode(errors="replace")
        expected = answers == 1 and got == str(status)
        stats.add("smuggling", f"expected {got}" if expected else f"{got} ({answers} answers)",
                  failure=None if expected else f"{headers}: {reply[:200]!r}")


def slow_header(port: int, stats: Stats, stop: threading.Event) -> None:
    """Trickle a request head a byte every 0.5 s: 408 at the header deadline, then closed."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                if not trickled(s, head, 0.5, stop):
                    return
                reply = b"".join(iter(lambda: s.recv(65536), b""))
        except OSError as e:
            stats.add("slow header", "connection error", failure=repr(e))
            continue
        took = time.monotonic() - t0
        expected = reply.startswith(b"HTTP/1.1 408 ") and took < HEADER_TIMEOUT_S + 5
        stats.add("slow header", "expected 408" if expected else reply[9:12].decode(errors="replace") or "closed",
                  failure=None if expected else f"after {took:.1f} s: {reply[:200]!r}")


def trickled(s: socket.socket, data: bytes, pause_s: float, stop: threading.Event) -> bool:
    """Send data a byte every pause_s until the server answers (True) or stop is set (False)."""
    for byte in data:
        if select.select([s], [], [], pause_s)[0]:
            return True
        if stop.is_set():
            return False
        s.sendall(bytes([byte]))
    return True


def idle(port: int, count: int, stats: Stats, stop: threading.Event) -> None:
    """Hold `count` sockets, half of them stopped mid-header; reopen each one the server closes."""
    def connect(i: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        return s
    sockets = [connect(i) for i in range(count)]
    while not stop.wait(1.0):
        for i, s in enumerate(sockets):
            if select.select([s], [], [], 0)[0] and not s.recv(65536):
                s.close()
                sockets[i] = connect(i)
                stats.add("idle", "closed by server")
    for s in sockets:
        s.close()


def hang_up(base_url: str, stats: Stats, stop: threading.Event) -> None:
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as client:
        while not stop.wait(1.0):
            try:
                stream = client.chat.completions.create(model=MODEL, max_tokens=300, stream=True,
                                                        messages=[{"role": "user", "content": "Tell a long story."}])
                chunks = iter(stream)
                next(chunks), next(chunks), next(chunks)
                stream.close()
                stats.add("hang-up", "ok")
            except (openai.APIError, StopIteration) as e:
                stats.add("hang-up", "failed", failure=repr(e))


def proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MB, threads) of a process."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def start_server(args, stderr: IO[bytes]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "scoreflow.serve", "--port", "0", "--max-batch", str(args.max_batch),
                             "--max-connections", str(args.max_connections), "--idle-timeout", str(args.idle_timeout)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    url = None
    for line in proc.stdout:
        if "listening on " in line:
            url = line.split("listening on ")[1].split(";")[0]
        if "serving" in line:
            return proc, url
    raise SystemExit(f"the server did not start (exit status {proc.wait()})")


def free_slots(port: int, n: int) -> int:
    """Hold n connections open at once, each asking GET /health: how many are served (not 503 busy)."""
    time.sleep(LINGER_S + 1.0)  # the clients' last connections end their linger
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    try:
        for s in sockets:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        return sum(s.recv(65536).startswith(b"HTTP/1.1 200 ") for s in sockets)
    finally:
        for s in sockets:
            s.close()


def stop_server(proc: subprocess.Popen, stderr: IO[bytes]) -> tuple[int, bool]:
    """SIGTERM: (exit status, whether it aborted: "terminate called" on its stderr)."""
    proc.terminate()
    status = proc.wait(timeout=120)
    stderr.seek(0)
    return status, b"terminate called" in stderr.read()


def report(stats: Stats, samples: list[tuple[float, float, int]], seconds: float, ending: tuple[int, int, bool],
           args) -> bool:
    lat = sorted(stats.latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    fivexx = sum(n for (kind, outcome), n in stats.counts.items() if outcome[:1] == "5")
    failed = sum(n for (kind, outcome), n in stats.counts.items() if kind == "well-formed" and outcome != "ok")
    unexpected = sum(n for (kind, outcome), n in stats.counts.items()
                     if kind in ("smuggling", "slow header") and not outcome.startswith("expected"))
    warm = samples[len(samples) // 4]
    rss_growth = samples[-1][1] - warm[1]
    threads_max = max(t for _, _, t in samples)
    (free, status, aborted), n = ending, args.max_connections
    print(f"\n| measure | value |\n|---|---|\n| real duration | {seconds / 60:.1f} min |")
    for (kind, outcome), count in sorted(stats.counts.items()):
        print(f"| {kind}: {outcome} | {count} |")
    print(f"| well-formed latency p50 / p99 | {q[49]:.2f} s / {q[98]:.2f} s |\n| 5xx responses | {fivexx} |\n"
          f"| smuggling / slow-header answers not as expected | {unexpected} |\n"
          f"| server RSS start / after warm-up -> end (max) | {samples[0][1]:.0f} / {warm[1]:.0f} -> "
          f"{samples[-1][1]:.0f} MB ({max(r for _, r, _ in samples):.0f} MB) |\n"
          f"| server threads max (bound: {n} connections + 8) | {threads_max} |\n"
          f"| connection slots free at the end | {free} / {n} |\n"
          f"| server exit status on SIGTERM | {status}{' (aborted: terminate called)' if aborted else ''} |")
    for f in stats.failures:
        print("failure:", f)
    return (fivexx == 0 and failed == 0 and unexpected == 0 and threads_max <= n + 8
            and rss_growth <= 0.1 * warm[1] and free == n and status == 0 and not aborted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="How long the clients run.")
    ap.add_argument("--well-formed", type=int, default=4, help="Threads sending well-formed requests.")
    ap.add_argument("--idle", type=int, default=16, help="Idle sockets held open.")
    ap.add_argument("--max-batch", type=int, default=8, help="The server's --max-batch.")
    ap.add_argument("--max-connections", type=int, default=48, help="The server's --max-connections.")
    ap.add_argument("--idle-timeout", type=float, default=10.0, help="The server's --idle-timeout, seconds.")
    ap.add_argument("--slow-headers", type=int, default=8, help="Sockets trickling a request head.")
    args = ap.parse_args()
    with tempfile.TemporaryFile() as stderr:
        proc, base_url = start_server(args, stderr)
        try:
            stats, samples, seconds, free = soak(proc, base_url, args)
        finally:
            status, aborted = stop_server(proc, stderr)
    sys.exit(0 if report(stats, samples, seconds, (free, status, aborted), args) else 1)


def soak(proc: subprocess.Popen, base_url: str, args) -> tuple[Stats, list[tuple[float, float, int]], float, int]:
    """Run the clients for --minutes, sampling the server; (stats, samples, seconds, free slots at the end)."""
    port, stats, stop, samples = int(base_url.rsplit(":", 1)[1].split("/")[0]), Stats(), threading.Event(), []
    workers = [threading.Thread(target=well_formed, args=(base_url, stats, stop, i)) for i in range(args.well_formed)]
    workers += [threading.Thread(target=f, args=(base_url, stats, stop)) for f in (malformed, oversized, hang_up)]
    raw = [smuggling] + [slow_header] * args.slow_headers
    workers += [threading.Thread(target=f, args=(port, stats, stop)) for f in raw]
    workers.append(threading.Thread(target=idle, args=(port, args.idle, stats, stop)))
    t0 = time.monotonic()
    try:
        for w in workers:
            w.start()
        while time.monotonic() - t0 < args.minutes * 60:
            samples.append((time.monotonic() - t0, *proc_status(proc.pid)))
            time.sleep(5.0)
        samples.append((time.monotonic() - t0, *proc_status(proc.pid)))
    finally:
        stop.set()
        for w in workers:
            w.join()
    seconds = time.monotonic() - t0
    return stats, samples, seconds, free_slots(port, args.max_connections)


if __name__ == "__main__":
    main()
