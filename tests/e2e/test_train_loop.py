"""`python -m scoreflow.train` end to end, as a real subprocess: the generator is an
OpenAI-compatible /v1/completions endpoint and the executor a chat endpoint, both a scripted
loopback server (so workflow quality, and hence scores and pairs, are known); Score-DPO
trains the LoRA of a shallow copy of the default model (its first layers). Then kill -9 mid-run
and resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scripted_workflows import BAD, GOOD, INVALID, gold_in


class ScoreFlowScript(FakeOpenAIServer):
    """Generator: n choices cycling GOOD, BAD, INVALID. Executor: the gold answer of the
    question in the prompt when the instruction says GOOD, a wrong one otherwise."""

    def __init__(self, rows: list[dict], **kw):
        super().__init__(**kw)
        self.rows = rows

    def _default_reply(self, path, body):
        if path == "/v1/completions":
            texts = [(GOOD, BAD, INVALID)[i % 3] for i in range(body.get("n", 1))]
            return Reply(body={"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                               "choices": [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        text = json.dumps(body["messages"])
        gold = gold_in(self.rows, text.replace("\\n", "\n"))
        return Reply(body=completion(f"\\boxed{{{gold}}}" if "GOOD" in text else "\\boxed{123456}"))


@pytest.fixture(scope="module")
def shallow_generator(tmp_path_factory, default_model_dir) -> Path:
    """The default model cut to its first 6 of 30 layers, as an HF-format directory with its
    tokenizer: a Score-DPO step on it takes ~1.5 s instead of ~9 s, still long enough to kill
    the run between two steps. (Training the whole model is test_dpo_trainer's and the main
    job's business.)"""
    out, layers = tmp_path_factory.mktemp("shallow"), 6
    config = json.loads((default_model_dir / "config.json").read_text()) | {"num_hidden_layers": layers}
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, out)
    kept = lambda name: not name.startswith("model.layers.") or int(name.split(".")[2]) < layers  # noqa: E731
    weights = load_file(default_model_dir / "model.safetensors")
    save_file({k: v for k, v in weights.items() if kept(k)}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def train_cmd(server, generator: Path, out: Path, *extra):
    return [sys.executable, "-m", "scoreflow.train", "--task", "gsm8k", "--limit", "2", "--k", "3", "--runs", "2",
            "--iterations", "1", "--pairs", "2", "--invalid", "zero", "--generator", str(generator),
            "--generator-url", server.base_url,
            "--generator-model", "scripted", "--executor-url", server.base_url, "--executor-model", "scripted",
            "--lr", "1e-4", "--checkpoint-every", "1", "--out", str(out), *extra]


def env():
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def artefacts(out: Path) -> dict:
    it = out / "iter_0"
    read = lambda name: [json.loads(l) for l in (it / name).read_text().splitlines()]  # noqa: E731
    strip = lambda rows, drop: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    by_key = lambda rows, *k: sorted(rows, key=lambda r: tuple(r[x] for x in k))  # noqa: E731
    return {"workflows": by_key(read("workflows.jsonl"), "id"),
            "executions": by_key(strip(read("executions.jsonl"), {"seconds"}), "workflow_id", "run"),
            "scores": read("scores.jsonl"), "pairs": read("pairs.jsonl"),
            "metrics": strip(read("train/metrics.jsonl"), {"seconds"}),
            "adapter": (it / "adapter" / "adapter_model.safetensors").read_bytes()}


@pytest.mark.slow
def test_one_iteration_end_to_end_then_kill_and_resume(tmp_path, gsm8k_rows, shallow_generator):
    with ScoreFlowScript(gsm8k_rows[:2], delay_s=0.05) as server:
        full = subprocess.run(train_cmd(server, shallow_generator, tmp_path / "full"), env=env(),
                              capture_output=True, text=True, timeout=600)
        assert full.returncode == 0, full.stderr[-3000:]
        a = artefacts(tmp_path / "full")
        assert len(a["workflows"]) == 6 and sum(w["valid"] for w in a["workflows"]) == 4
        assert len(a["executions"]) == 4 * 2
        score = {s["workflow_id"]: s["score"] for s in a["scores"]}
        good = [w["id"] for w in a["workflows"] if w["response"] == GOOD]
        bad = [w["id"] for w in a["workflows"] if w["response"] == BAD]
        invalid = [w["id"] for w in a["workflows"] if not w["valid"]]
        assert all(score[i] == 1.0 for i in good) and all(score[i] == 0.0 for i in bad + invalid)
        assert len(a["pairs"]) == 2  # sampled from the 4 candidates (GOOD beats BAD and INVALID)
        for p in a["pairs"]:  # every pair references real workflows with the stated scores
            assert score[p["winner_id"]] == p["s_w"] > p["s_l"] == score[p["loser_id"]]
        assert [m["step"] for m in a["metrics"]] == [1, 2]
        from scoreflow.lora import load_adapter
        from scoreflow.llama import load_model
        load_adapter(load_model(shallow_generator), tmp_path / "full" / "iter_0" / "adapter")

        # kill -9 in the execution stage, then again in the training stage; rerun each time
        out = tmp_path / "resumed"
        for marker, lines in (("executions.jsonl", 2), ("train/metrics.jsonl", 1)):
            proc = subprocess.Popen(train_cmd(server, shallow_generator, out), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                path = out / "iter_0" / marker
                if path.exists() and path.read_text().count("\n") >= lines:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, f"the run ended before it could be killed at {marker}"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        n_exec_requests = server.request_count
        again = subprocess.run(train_cmd(server, shallow_generator, out), env=env(), capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        b = artefacts(out)
        assert b == a  # no duplicated executions, identical artefacts
        assert server.request_count >= n_exec_requests
