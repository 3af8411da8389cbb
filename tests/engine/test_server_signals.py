"""A clean stop in the middle of a generation: SIGTERM or SIGINT to `python -m scoreflow.serve`,
or a KeyboardInterrupt inside a `serve_locally` block. The requests in flight get a reply or a
closed connection (never a hang), the engine's thread is stopped and joined, and the process
exits with its normal status, not an abort ("terminate called without an active exception",
-6: a daemon thread still inside torch when the interpreter exits).

The model is a random 2-layer one with the default model's tokenizer: it loads at once and,
greedy, does not stop before max_tokens, so the generation is still running at the signal."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scoreflow.engine.local import serve_locally

pytestmark = pytest.mark.slow
CONTEXT = 4096
RUNS = 5  # per signal, each in its own process
TINY = dict(model_type="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=CONTEXT,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5, rope_theta=10000.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir) -> Path:
    """An HF-format directory: TINY's random weights, the default model's tokenizer files."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "config.json").write_text(json.dumps(TINY))
    C, F, g = TINY["hidden_size"], TINY["intermediate_size"], torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (TINY["vocab_size"], C), "model.norm.weight": (C,)}
    for i in range(TINY["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                   p + "self_attn.q_proj.weight": (C, C), p + "self_attn.k_proj.weight": (C // 2, C),
                   p + "self_attn.v_proj.weight": (C // 2, C), p + "self_attn.o_proj.weight": (C, C),
                   p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                   p + "mlp.down_proj.weight": (C, F)}
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, d / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, d / name)
    return d


def post(port: int, stream: bool) -> socket.socket:
    """A completion as long as the context allows, sent; the socket to read its reply from."""
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": CONTEXT - 16, "temperature": 0,
                       "stream": stream}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def generating(port: int) -> tuple[socket.socket, socket.socket]:
    """A plain and a streamed completion, returned once the stream's first token has arrived."""
    plain, streamed = post(port, False), post(port, True)
    seen = b""
    while b"data: " not in seen:
        chunk = streamed.recv(65536)
        assert chunk, "the stream ended before its first token"
        seen += chunk
    return plain, streamed


def rest(s: socket.socket, timeout_s: float = 30.0) -> bytes:
    """What the server still sends before it closes the connection; a hang fails."""
    with s:
        s.settimeout(timeout_s)
        return b"".join(iter(lambda: s.recv(65536), b""))


def assert_ended(plain: socket.socket, streamed: socket.socket) -> None:
    """The plain request got the stop's 503 or a closed connection; the stream an error event or
    its end."""
    reply = rest(plain)
    assert reply == b"" or (reply.startswith(b"HTTP/1.1 503 ") and b"server_shutting_down" in reply), reply
    tail = rest(streamed)
    assert tail == b"" or b"server_shutting_down" in tail or tail.endswith(b"0\r\n\r\n"), tail[-300:]


def serve_and_signal(model_dir: Path, sig: int) -> tuple[int, str]:
    """Start `python -m scoreflow.serve`, send `sig` during a long generation; (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "scoreflow.serve", "--model", str(model_dir), "--port", "0",
                             "--max-batch", "2", "--max-seq-len", str(CONTEXT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split("listening on ")[1].split(";")[0]
        assert "serving" in proc.stdout.readline()
        plain, streamed = generating(int(url.rsplit(":", 1)[1].split("/")[0]))
        proc.send_signal(sig)
        assert_ended(plain, streamed)
        return proc.wait(timeout=30), proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal_during_generation(tiny_dir, sig):
    with ThreadPoolExecutor(2) as pool:  # two processes at a time: the test's time halves
        outcomes = list(pool.map(lambda _: serve_and_signal(tiny_dir, sig), range(RUNS)))
    for status, stderr in outcomes:
        assert status == 0 and "terminate called" not in stderr and "Traceback" not in stderr, (status, stderr)


def scoreflow_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("scoreflow-")]


def test_serve_locally_interrupted_during_generation_leaves_no_thread(tiny_dir):
    assert not scoreflow_threads()
    with pytest.raises(KeyboardInterrupt):
        with serve_locally(tiny_dir, max_batch=2, max_seq_len=CONTEXT) as server:
            plain, streamed = generating(server.port)
            raise KeyboardInterrupt  # what Ctrl-C raises in `python -m scoreflow.train`'s main thread
    assert_ended(plain, streamed)
    assert not scoreflow_threads() and server.engine._worker is None


INTERRUPTED = """
import os, signal, sys, time
from scoreflow.engine.local import serve_locally
from test_server_signals import generating
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises here even if this process was started
                                                          # with SIGINT ignored (a background job of a script)
with serve_locally(sys.argv[1], max_batch=2, max_seq_len=int(sys.argv[2])) as server:
    replies = generating(server.port)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    time.sleep(60)
"""


def test_a_process_interrupted_inside_serve_locally_exits_as_interrupted(tiny_dir):
    """An uncaught KeyboardInterrupt ends Python with status -SIGINT (since 3.8), never -SIGABRT."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tiny_dir), str(CONTEXT)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGINT and "terminate called" not in done.stderr, (done.returncode, done.stderr)
    assert "KeyboardInterrupt" in done.stderr
