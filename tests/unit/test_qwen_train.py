"""Score-DPO on Qwen2.5-Coder-0.5B-Instruct: a q/v LoRA trained with and without gradient
checkpointing gives the same two steps (lora_B moves in the first, lora_A from the second); only
the LoRA factors change, the q/k/v biases stay as loaded."""

import pytest
import torch

import scoreflow.llama.model as model_mod
from scoreflow.dpo.batch import PairExample
from scoreflow.dpo.trainer import TrainConfig, train_dpo
from scoreflow.llama import load_model
from scoreflow.lora import LoRALinear, apply_lora

pytestmark = pytest.mark.slow

QUESTION, CHOSEN, REJECTED = ("Add two numbers in Python.", "def add(a, b):\n    return a + b",
                               "def add(a, b):\n    return a - b")


def pair_example(tok) -> PairExample:
    end = [tok.eos_token_ids[0]]
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": QUESTION}]))
    return PairExample(tuple(prompt), tuple(tok.encode(CHOSEN) + end), tuple(tok.encode(REJECTED) + end), 1.0, 0.0)


def test_score_dpo_with_checkpointing_on_q_v_lora(qwen_model_dir, qwen_tokenizer, tmp_path, monkeypatch):
    model = apply_lora(load_model(qwen_model_dir, device="cpu"), dropout=0.0)
    assert {n.rsplit(".", 1)[1] for n, m in model.named_modules() if isinstance(m, LoRALinear)} == {"q_proj", "v_proj"}
    watched = lambda: {n: p.detach().clone() for n, p in model.named_parameters()  # noqa: E731
                       if "lora_" in n or p.dim() == 1}  # LoRA factors, biases, norms
    before, runs = watched(), {}
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(model_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for gc in (True, False):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in before:
                    p.copy_(before[n])
        calls.clear()
        history = train_dpo(model, [pair_example(qwen_tokenizer)], tmp_path / f"gc_{gc}",
                            TrainConfig(lr=1e-3, epochs=2, gradient_checkpointing=gc), progress=False)
        assert bool(calls) == gc
        runs[gc] = [m["loss"] for m in history], watched()
    (loss_gc, after_gc), (loss_plain, after_plain) = runs[True], runs[False]
    assert len(loss_gc) == 2 and loss_gc == pytest.approx(loss_plain, rel=1e-5)
    changed = {n for n in before if not torch.equal(before[n], after_gc[n])}
    assert changed == {n for n in before if ".lora_" in n}
    assert all(".q_proj." in n or ".v_proj." in n for n in changed)
    assert sum(n.endswith(".bias") for n in before) == 24 * 3  # q/k/v biases of 24 layers, unchanged
    for n in changed:
        torch.testing.assert_close(after_gc[n], after_plain[n], rtol=1e-4, atol=1e-6)
