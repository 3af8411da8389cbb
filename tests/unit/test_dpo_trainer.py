"""Trainer: shared-prompt log-probs, learning on the default model, exact resume, gloo DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crash_resume import crash_then_resume, metrics

from scoreflow.dpo.batch import PairExample, pack, pair_logps
from scoreflow.dpo.trainer import TrainConfig, train_dpo
from scoreflow.llama import LlamaConfig, Transformer
from scoreflow.lora import apply_lora

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def tiny_lora_model(dropout: float = 0.01) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TINY)
    for p in model.parameters():
        p.requires_grad_(False)
    return apply_lora(model, r=4, alpha=8, dropout=dropout)


def tiny_pairs(n: int = 8) -> list[PairExample]:
    g = torch.Generator().manual_seed(1)
    ids = lambda k: tuple(torch.randint(0, 64, (k,), generator=g).tolist())  # noqa: E731
    return [PairExample(ids(5 + i % 3), ids(3 + i % 2), ids(2 + i % 4), s_w=0.5 + 0.04 * i, s_l=0.1 * (i % 3))
            for i in range(n)]


def lora_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_shared_prompt_logps_equal_separate_sequences():
    """Packing [prompt, chosen, rejected] in one row gives each response's own log-prob."""
    model = tiny_lora_model().eval()
    pairs = tiny_pairs(3)
    with torch.no_grad():
        chosen, rejected = pair_logps(model, pack(pairs))
        for i, p in enumerate(pairs):
            for resp, got in ((p.chosen_ids, chosen[i]), (p.rejected_ids, rejected[i])):
                x = torch.tensor([p.prompt_ids + resp])
                lp = model(x)[0].double().log_softmax(-1)
                P = len(p.prompt_ids)
                want = sum(lp[P + j - 1, t] for j, t in enumerate(resp))
                assert abs(got.item() - want.item()) < 1e-4


def test_resume_after_crash_is_bit_identical(tmp_path, monkeypatch):
    cfg = TrainConfig(lr=1e-2, checkpoint_every=3, batch_size=1, grad_accum=2)
    full = tiny_lora_model()
    train_dpo(full, tiny_pairs(12), tmp_path / "full", cfg, progress=False)

    # crash after step 5's metrics line, two steps past the step-3 checkpoint
    resumed = crash_then_resume(tiny_lora_model, tiny_pairs(12), tmp_path / "resumed", cfg, 5, monkeypatch)
    a, b = lora_params(full), lora_params(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    lines = lambda d: metrics(tmp_path / d)  # noqa: E731
    assert [m["step"] for m in lines("resumed")] == list(range(1, 7))
    assert lines("full") == lines("resumed")


def test_two_process_gloo_matches_gradient_accumulation(tmp_path):
    single = tiny_lora_model(dropout=0.0)
    train_dpo(single, tiny_pairs(), tmp_path / "single", TrainConfig(lr=1e-2, batch_size=1, grad_accum=2),
              progress=False)
    tests = Path(__file__).resolve().parents[1]
    worker = tests / "helpers" / "workers" / "dpo_ddp.py"
    path = [str(Path(__file__).resolve().parent), str(tests / "helpers"), str(tests.parent)]  # this file, crash_resume
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", port, str(worker), str(tmp_path / "ddp"), str(tmp_path / "ddp.pt")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    for n, p in lora_params(single).items():
        torch.testing.assert_close(ddp[n], p, rtol=1e-5, atol=1e-7)
    assert not torch.equal(p, torch.zeros_like(p))


def test_lora_required():
    model = Transformer(TINY)
    with pytest.raises(ValueError, match="apply_lora"):
        train_dpo(model, tiny_pairs(), "/tmp/unused", progress=False)


@pytest.mark.slow
def test_score_dpo_raises_reward_margin_on_default_model(default_model_dir, default_tokenizer, gsm8k_rows, tmp_path):
    """GSM8K questions; chosen = the reference solution (score 1), rejected = the same solution
    with a wrong final number (score 0). One epoch, three steps, must push the mean implicit reward
    margin above 0.02 (it reaches about 0.13)."""
    from scoreflow.llama import load_model

    model = apply_lora(load_model(default_model_dir, device="cpu"))
    tok = default_tokenizer
    rows = gsm8k_rows[:3]
    end = tok.encode("<|im_end|>")
    pairs = []
    for r in rows:
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}]))
        good = f"{r['cot'].strip()}\nThe answer is {r['answer']}."
        bad = f"{r['cot'].strip()}\nThe answer is {int(float(r['answer'].replace(',', ''))) + 7}."
        pairs.append(PairExample(tuple(prompt), tuple(tok.encode(good) + end), tuple(tok.encode(bad) + end), 1.0, 0.0))

    def margins():
        with torch.no_grad():
            pol_w, pol_l = pair_logps(model.eval(), pack(pairs))
        ref = json.loads((tmp_path / "ref_logps.json").read_text())
        from scoreflow.dpo.trainer import _key
        ref_w = torch.tensor([ref[_key(p.prompt_ids, p.chosen_ids)] for p in pairs])
        ref_l = torch.tensor([ref[_key(p.prompt_ids, p.rejected_ids)] for p in pairs])
        return 0.1 * ((pol_w - ref_w) - (pol_l - ref_l))

    history = train_dpo(model, pairs, tmp_path, TrainConfig(lr=5e-4, epochs=1, warmup_steps=1), progress=False)
    assert len(history) == 3 and all(0 <= m["theorem2_fraction"] <= 1 for m in history)
    assert margins().mean() > 0.02, margins()
