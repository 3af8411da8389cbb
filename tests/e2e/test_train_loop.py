"""`python -m scoreflow.train` end to end, as a real subprocess: the generator is an
OpenAI-compatible /v1/completions endpoint and the executor a chat endpoint, both a scripted
loopback server (so workflow quality, and hence scores and pairs, are known); Score-DPO
trains the LoRA of a shallow copy of the default model (its first layers). Then kill -9 mid-run
and resume."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripted_workflows import BAD, GOOD, INVALID, ScoreFlowScript


def train_cmd(server, generator: Path, out: Path, *extra):
    return [sys.executable, "-m", "scoreflow.train", "--task", "gsm8k", "--limit", "2", "--k", "3", "--runs", "2",
            "--iterations", "1", "--pairs", "2", "--invalid", "zero", "--generator", str(generator),
            "--generator-url", server.base_url,
            "--generator-model", "scripted", "--executor-url", server.base_url, "--executor-model", "scripted",
            "--lr", "1e-4", "--checkpoint-every", "1", "--device", "cpu", "--out", str(out), *extra]


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


def assert_same_run(b: dict, a: dict) -> None:
    """Every stage's records equal; the training's floats equal up to float noise. A kill in
    training can make the resumed process redo a step against reference log-probs another
    process computed, and the two processes' forwards have once differed by 5 ulps of a
    2100-nat sum. The tolerances still catch a step redone with other dropout masks (grad
    norm), optimizer state (the adapter) or learning rate (exact)."""
    assert {k: b[k] for k in ("workflows", "executions", "scores", "pairs")} == \
        {k: a[k] for k in ("workflows", "executions", "scores", "pairs")}
    floats = ("loss", "reward_margin", "grad_norm")
    assert [{k: v for k, v in m.items() if k not in floats} for m in b["metrics"]] == \
        [{k: v for k, v in m.items() if k not in floats} for m in a["metrics"]]
    for mb, ma in zip(b["metrics"], a["metrics"]):
        assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-4)
        assert mb["reward_margin"] == pytest.approx(ma["reward_margin"], abs=1e-3)
        assert mb["grad_norm"] == pytest.approx(ma["grad_norm"], rel=1e-4)
    from safetensors.torch import load

    wa, wb = load(a["adapter"]), load(b["adapter"])
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-7, msg=name)


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

        # kill -9 in the execution stage (2 runs recorded), then in training once step 1's checkpoint
        # is written (so the rerun resumes from it: optimizer, schedule and RNG state); rerun each time
        out = tmp_path / "resumed"
        it = out / "iter_0"
        for marker, reached in (("executions.jsonl", lambda: (it / "executions.jsonl").read_text().count("\n") >= 2),
                                ("checkpoint", (it / "train" / "checkpoint" / "state.rank0.pt").exists)):
            proc = subprocess.Popen(train_cmd(server, shallow_generator, out), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if (it / "executions.jsonl").exists() and reached():
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
        assert_same_run(b, a)  # no duplicated executions, the same training
        assert not list(it.glob("train/**/.*.tmp"))  # no temporary left behind
        assert server.request_count >= n_exec_requests


@pytest.mark.slow
def test_torchrun_two_ranks_rank0_runs_the_stages_both_train(tmp_path, gsm8k_rows, shallow_generator):
    """`torchrun --nproc-per-node 2 -m scoreflow.train` (gloo on CPU): only rank 0 samples and
    executes (the stages' artefacts are the one-process run's: 6 workflows, 8 runs, 2 pairs),
    and both ranks train: one step holds both pairs. (That such a step equals one process
    accumulating two micro-batches is test_dpo_trainer's gloo test.)"""
    with ScoreFlowScript(gsm8k_rows[:2], delay_s=0.05) as server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                    "127.0.0.1", "--master-port", port, *train_cmd(server, shallow_generator, tmp_path / "ranks")[1:]]
        ranks = subprocess.run(torchrun, env=env(), capture_output=True, text=True, timeout=600)
        assert ranks.returncode == 0, ranks.stderr[-3000:]
    sampled = [r for r in server.requests if r.path == "/v1/completions" and r.body.get("max_tokens") != 1]
    assert len(sampled) == 2  # rank 0 alone sampled: one request per question (the preflight aside)
    b = artefacts(tmp_path / "ranks")
    assert len(b["workflows"]) == 6 and len(b["executions"]) == 4 * 2 and len(b["pairs"]) == 2
    score = {s["workflow_id"]: s["score"] for s in b["scores"]}
    assert all(score[p["winner_id"]] == p["s_w"] > p["s_l"] == score[p["loser_id"]] for p in b["pairs"])
    assert [(m["step"], m["pairs"]) for m in b["metrics"]] == [(1, 2)]  # both ranks' pairs in one step
    from safetensors.torch import load

    weights = load(b["adapter"])
    assert all(weights[k].abs().max() > 0 for k in weights if "lora_B" in k)  # B starts at 0: it trained
    assert not list((tmp_path / "ranks").glob("iter_0/train/checkpoint/.*.tmp"))


@pytest.mark.slow
def test_cost_weight_prefers_the_cheaper_of_two_right_workflows(tmp_path, gsm8k_rows, shallow_generator):
    """Two workflows both solve the question, one in half the executor tokens: with --cost-weight
    the pairs prefer it, and Score-DPO raises its log-probability relative to the other's."""
    from scoreflow.dpo.batch import PairExample, pack, pair_logps
    from scoreflow.llama import load_model, load_tokenizer
    from scoreflow.lora import disable_adapter, load_adapter
    from scoreflow.optimize.generator import prompt_ids
    from scoreflow.tasks import load_task
    from scripted_workflows import CHEAP, CostScript

    out = tmp_path / "cost"
    with CostScript(gsm8k_rows[:1]) as server:
        cmd = [a for a in train_cmd(server, shallow_generator, out, "--cost-weight", "0.5", "--lora-dropout", "0")]
        cmd[cmd.index("--limit") + 1], cmd[cmd.index("--k") + 1], cmd[cmd.index("--runs") + 1] = "1", "2", "1"
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = artefacts(out)
    cheap = next(w["id"] for w in a["workflows"] if w["response"].startswith(CHEAP))
    scores = {s["workflow_id"]: s for s in a["scores"]}
    assert all(s["solve"] == 1.0 for s in scores.values())  # both right
    dear = next(w for w in scores if w != cheap)
    assert scores[dear]["cost"] == 2 * scores[cheap]["cost"]  # from the runs' recorded tokens
    assert scores[cheap]["score"] > scores[dear]["score"]
    assert a["pairs"] and all(p["winner_id"] == cheap for p in a["pairs"])

    tok = load_tokenizer(shallow_generator)
    question = load_task("gsm8k", "validate").questions[0]
    end = [tok.eos_token_ids[0]]
    responses = {w["id"]: tuple(tok.encode(w["response"]) + end) for w in a["workflows"]}
    prompt = tuple(prompt_ids(tok, "math", question.prompt))
    model = load_adapter(load_model(shallow_generator), out / "iter_0" / "adapter").eval()
    packed = pack([PairExample(prompt, responses[cheap], responses[dear], 1.0, 0.0)])
    with torch.no_grad():
        trained = pair_logps(model, packed)
        with disable_adapter(model):
            base = pair_logps(model, packed)
    # log π(CHEAP) - log π(GOOD) rose: what DPO optimises (both absolute log-probs fell here, as
    # DPO's often do: it raises the margin, not the chosen response's own probability)
    assert (trained[0] - trained[1]).item() > (base[0] - base[1]).item()


@pytest.mark.slow
def test_a_rerun_trains_the_next_iteration_from_the_adapter_an_earlier_process_wrote(
        tmp_path, gsm8k_rows, shallow_generator, monkeypatch):
    """In-process generator (its sampling scripted: GOOD, BAD, INVALID). A run that died after
    iteration 0's training is rerun: the new `run` never trained its own generator, so it must
    load iteration 0's adapter before training iteration 1, and writes the same adapter as the
    run that was never interrupted."""
    from safetensors.torch import load_file

    from scoreflow import train
    from scoreflow.optimize.config import resolve
    from scoreflow.optimize.generator import LocalGenerator

    def scripted(self, prompts, n, seeds):
        return [[(GOOD, BAD, INVALID)[i % 3] for i in range(k)] for k in (n if isinstance(n, list) else [n] * len(prompts))]

    monkeypatch.setattr(LocalGenerator, "sample", scripted)
    with ScoreFlowScript(gsm8k_rows[:2]) as server:
        argv = ["--task", "gsm8k", "--limit", "2", "--k", "3", "--runs", "1", "--iterations", "2", "--pairs", "1",
                "--invalid", "zero", "--generator", str(shallow_generator), "--executor-url", server.base_url,
                "--executor-model", "scripted", "--lr", "1e-4", "--device", "cpu"]
        overrides, dpo, _, _ = train.parse_args(argv)
        cfg = resolve(overrides, dpo)
        train.run(cfg, tmp_path / "full")
        shutil.copytree(tmp_path / "full", tmp_path / "rerun")
        it1 = tmp_path / "rerun" / "iter_1"
        for path in (it1 / "train", it1 / "adapter"):  # as if killed before iteration 1 trained
            shutil.rmtree(path)
        (it1 / ".train.done").unlink()
        train.run(cfg, tmp_path / "rerun")
    want, got = (load_file(d / "iter_1" / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "full", it1.parent))
    assert want.keys() == got.keys()
    for name in want:  # float noise aside (assert_same_run)
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-7, msg=name)
