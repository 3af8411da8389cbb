"""Score-DPO by influence (issue 17): one packed pass per question gives the exact weighted
gradient of all its pairs. Oracles in float64 on a tiny model: pairs one at a time, responses
one sequence at a time, the LM head on all rows at once."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crash_resume import crash_then_resume, metrics

from scoreflow.dpo.batch import (
    PairExample,
    QuestionExample,
    pack,
    pair_logps,
    response_logps,
    token_logps,
)
from scoreflow.dpo.group import group_by_question
from scoreflow.dpo.loss import dpo_loss, score_dpo_loss
from scoreflow.dpo.objective import question_objective
from scoreflow.dpo.trainer import TrainConfig, train_dpo
from scoreflow.llama import LlamaConfig, Transformer
from scoreflow.llama.model import MaskedPlan
from scoreflow.lora import apply_lora

DT = torch.float64
BETA = 0.1
TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def tiny_model(dtype=DT, dropout=0.0) -> Transformer:
    """LoRA r4 on q, v with B drawn too (B = 0 would leave A without gradient)."""
    torch.manual_seed(0)
    model = Transformer(TINY)
    for p in model.parameters():
        p.requires_grad_(False)
    apply_lora(model, r=4, alpha=8, dropout=dropout).to(dtype)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)
    return model


def ids(g, n):
    return tuple(torch.randint(0, TINY.vocab_size, (n,), generator=g).tolist())


def drawn_pairs(n_questions=2, k=5, draws=16, seed=0) -> list[PairExample]:
    """Pairs as sample_pairs returns them: drawn with repeats, weight 1/N each, questions
    interleaved. Per question, responses 0 and 1 tie on score (never a pair)."""
    g = torch.Generator().manual_seed(seed)
    questions = []
    for q in range(n_questions):
        responses = [ids(g, 2 + (q + j) % 4) for j in range(k)]
        scores = [0.3, 0.3, 0.1, 0.6, 0.9, 0.75, 0.45, 0.0][:k]
        questions.append((ids(g, 4 + q), responses, scores))
    pairs = []
    for d in range(draws):
        prompt, responses, scores = questions[d % n_questions]
        w, l = torch.randperm(k, generator=g)[:2].tolist()
        if scores[w] == scores[l]:
            continue
        w, l = (w, l) if scores[w] > scores[l] else (l, w)
        pairs.append(PairExample(prompt, responses[w], responses[l], scores[w], scores[l], weight=1 / draws))
    return pairs


def ref_table(pairs, seed=1) -> dict:
    """Cached reference log-probs: any fixed number per (prompt, response)."""
    g = torch.Generator().manual_seed(seed)
    keys = {(p.prompt_ids, r) for p in pairs for r in p.responses}
    return {key: -8 + 3 * torch.randn((), generator=g, dtype=DT).item() for key in sorted(keys)}


def lora_grads(model) -> torch.Tensor:
    grads = [p.grad.flatten() for n, p in sorted(model.named_parameters()) if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


@pytest.mark.parametrize("loss", ["score_dpo", "dpo"])
def test_grouped_gradient_equals_sum_over_pairs_one_at_a_time(loss):
    """One packed pass per question: the gradient of Σ_q Σ_m λ_q,m ℓ_q,m is Σ_pairs λ ∇ℓ_pair."""
    model, pairs = tiny_model(), drawn_pairs()
    ref = ref_table(pairs)
    for p in pairs:  # oracle: one pass per drawn pair
        pol_w, pol_l = pair_logps(model, pack([p]))
        ref_w, ref_l = (torch.tensor([ref[p.prompt_ids, r]], dtype=DT) for r in p.responses)
        s_w, s_l = torch.tensor([p.s_w], dtype=DT), torch.tensor([p.s_l], dtype=DT)
        ell = (score_dpo_loss(pol_w, pol_l, ref_w, ref_l, s_w, s_l, BETA) if loss == "score_dpo"
               else dpo_loss(pol_w, pol_l, ref_w, ref_l, BETA))
        (p.weight * ell).sum().backward()
    oracle = lora_grads(model)

    questions = group_by_question(pairs)
    assert len(questions) == 2 and sum(len(q.pairs) for q in questions) < len(pairs)  # repeats were merged
    policy = response_logps(model, pack(questions))  # both questions in one micro-batch (one row padded)
    reference = torch.tensor([ref[q.prompt_ids, r] for q in questions for r in q.responses], dtype=DT)
    total, _ = question_objective(questions, policy, reference, loss, BETA, "identity")
    total.backward()
    grouped = lora_grads(model)
    assert oracle.norm() > 0
    assert (grouped - oracle).norm() <= 1e-10 * oracle.norm()


def test_question_with_one_response_or_no_pair_contributes_nothing():
    model, pairs = tiny_model(), drawn_pairs(n_questions=1)
    (question,) = group_by_question(pairs)
    g = torch.Generator().manual_seed(5)
    lonely = QuestionExample(ids(g, 5), (ids(g, 3),), (0.7,), (), ())
    tied = QuestionExample(ids(g, 4), (ids(g, 2), ids(g, 3)), (0.5, 0.5), (), ())

    def loss_and_grads(batch):
        policy = response_logps(model, pack(batch))
        reference = policy.detach() - 1.0
        total, stats = question_objective(batch, policy, reference, "score_dpo", BETA, "identity")
        total.backward()
        return total, stats, lora_grads(model)

    alone, stats_alone, grads_alone = loss_and_grads([question])
    mixed, stats_mixed, grads_mixed = loss_and_grads([lonely, question, tied])
    torch.testing.assert_close(mixed, alone, rtol=1e-12, atol=0)
    torch.testing.assert_close(grads_mixed, grads_alone, rtol=1e-10, atol=1e-14)
    assert [stats_mixed.margin, stats_mixed.accuracy, stats_mixed.mass] == pytest.approx(
        [stats_alone.margin, stats_alone.accuracy, stats_alone.mass], rel=1e-12)
    empty, _, grads_empty = loss_and_grads([lonely, tied])
    assert empty.item() == 0 and not grads_empty.any()


def test_packed_logps_equal_each_response_run_alone():
    model, g = tiny_model().eval(), torch.Generator().manual_seed(4)
    questions = [QuestionExample(ids(g, 6), (ids(g, 3), ids(g, 1), ids(g, 5)), (0.0, 0.5, 1.0), (), ()),
                 QuestionExample(ids(g, 2), (ids(g, 4), ids(g, 2)), (1.0, 0.0), ((0, 1),), (1.0,))]
    with torch.no_grad():
        packed = response_logps(model, pack(questions))
        alone = []
        for q in questions:
            for r in q.responses:
                x = torch.tensor([q.prompt_ids + r])  # (1, T)
                h = model.trunk(x, torch.arange(x.shape[1])[None], MaskedPlan.causal(torch.ones_like(x, dtype=torch.bool)))
                lp = model.lm_head(h)[0].log_softmax(-1)  # (T, V) in float64
                P = len(q.prompt_ids)
                alone.append(sum(lp[P + j - 1, t] for j, t in enumerate(r)))
    assert packed.dtype == DT and len(packed) == 5
    torch.testing.assert_close(packed, torch.stack(alone), rtol=1e-10, atol=1e-12)


def test_gradient_checkpointing_works_through_the_packed_layout():
    model, pairs = tiny_model(), drawn_pairs()
    questions = group_by_question(pairs)
    coefficients = torch.linspace(-1, 1, sum(len(q.responses) for q in questions), dtype=DT)
    grads = {}
    for gc in (False, True):
        model.gradient_checkpointing = gc
        (coefficients * response_logps(model.train(), pack(questions))).sum().backward()
        grads[gc] = lora_grads(model)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-12, atol=1e-15)


def test_pack_lays_out_prompt_once_then_responses():
    q = QuestionExample((7, 8, 9), ((1, 2), (3,), (4, 5, 6)), (0.1, 0.2, 0.3), ((2, 0),), (1.0,))
    packed = pack([q])
    assert packed.input_ids.tolist() == [[7, 8, 9, 1, 2, 3, 4, 5, 6]]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 4, 3, 3, 4, 5]]
    assert packed.predict_at.tolist() == [2, 3, 2, 2, 6, 7]  # first token of every response: from the prompt
    assert packed.owner.tolist() == [0, 0, 1, 2, 2, 2] and packed.n_responses == 3
    seen_by_6 = packed.mask[0, 8].nonzero().flatten().tolist()
    assert seen_by_6 == [0, 1, 2, 6, 7, 8]  # the prompt and its own response, not the other two


@pytest.mark.parametrize("chunk", [1, 3, 16, 100])
def test_chunked_lm_head_equals_the_full_one(chunk):
    torch.manual_seed(3)
    head = torch.nn.Linear(32, TINY.vocab_size, bias=False).to(DT)
    h = torch.randn(16, 32, dtype=DT, requires_grad=True)
    targets = torch.randint(0, TINY.vocab_size, (16,))
    full = head(h).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    (want,) = torch.autograd.grad(full.sum(), h)
    got = token_logps(head, h, targets, chunk)
    (grad,) = torch.autograd.grad(got.sum(), h)
    torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


def test_chunked_lm_head_keeps_no_logits_for_backward():
    """Checkpointed chunks: what autograd keeps is O(N·C), never the N·V logits."""
    head = torch.nn.Linear(8, 1000, bias=False)
    h = torch.randn(64, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = token_logps(head, h, torch.zeros(64, dtype=torch.long), chunk=16)
    out.sum().backward()
    assert sum(saved) < 64 * 8 * 4  # with no checkpointing: > 64 * 1000 (logits and their softmax)
    assert h.grad.abs().sum() > 0


def test_group_by_question_merges_repeats_and_keeps_scores_apart():
    a, b = (1, 2), (3,)
    pairs = [PairExample((9,), a, b, 0.8, 0.2, 0.25), PairExample((5,), b, a, 0.6, 0.1, 0.5),
             PairExample((9,), a, b, 0.8, 0.2, 0.25), PairExample((9,), b, a, 0.2, 0.1, 1.0)]
    q9, q5 = group_by_question(pairs)
    assert q9.prompt_ids == (9,) and q9.responses == (a, b, a) and q9.scores == (0.8, 0.2, 0.1)
    assert q9.pairs == ((0, 1), (1, 2)) and q9.weights == (0.5, 1.0)
    assert q5.responses == (b, a) and q5.pairs == ((0, 1),) and q5.weights == (0.5,)


def test_one_question_step_equals_pair_mode_over_its_draws(tmp_path):
    """Drawn multiplicities: the question's one full-batch step has pair mode's loss and
    gradient when pair mode takes all of the question's draws in one batch."""
    pairs = drawn_pairs(n_questions=1, draws=10)
    runs = {}
    for grouping, batch in (("pair", len(pairs)), ("question", 1)):
        cfg = TrainConfig(lr=1e-3, batch_size=batch, dpo_grouping=grouping)
        runs[grouping] = train_dpo(tiny_model(torch.float32), pairs, tmp_path / grouping, cfg, progress=False)
    (pair,), (question,) = runs["pair"], runs["question"]
    for key in ("loss", "grad_norm", "reward_margin", "reward_accuracy"):
        assert question[key] == pytest.approx(pair[key], rel=1e-4, abs=1e-7), key
    assert question["questions"] == 1 and question["pairs"] < pair["pairs"] == len(pairs)


def test_question_mode_resumes_bit_identically(tmp_path, monkeypatch):
    pairs = drawn_pairs(n_questions=5, draws=40)
    cfg = TrainConfig(lr=1e-2, checkpoint_every=2, dpo_grouping="question")
    full = tiny_model(torch.float32, dropout=0.1)
    train_dpo(full, pairs, tmp_path / "full", cfg, progress=False)

    # crash after step 3's metrics line, one step past the step-2 checkpoint
    resumed = crash_then_resume(lambda: tiny_model(torch.float32, dropout=0.1), pairs, tmp_path / "resumed", cfg, 3,
                                monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
    lines = lambda d: metrics(tmp_path / d)  # noqa: E731
    assert lines("full") == lines("resumed") and [m["step"] for m in lines("full")] == [1, 2, 3, 4, 5]
    assert all(0 <= m["theorem2_fraction"] <= 1 and m["questions"] == 1 for m in lines("full"))
    with pytest.raises(ValueError, match="dpo_grouping='question'"):
        train_dpo(tiny_model(torch.float32), pairs, tmp_path / "full", TrainConfig(lr=1e-2), progress=False)


DDP_WORKER = """
import sys
import torch
import torch.distributed as dist
sys.path[:0] = {paths!r}
from test_dpo_grouped import drawn_pairs, tiny_model
from scoreflow.dpo.trainer import TrainConfig, train_dpo
dist.init_process_group("gloo")
model = tiny_model(torch.float32)
train_dpo(model, drawn_pairs(n_questions=3, draws=30), sys.argv[1], TrainConfig(lr=1e-2, dpo_grouping="question"),
          progress=False)
if dist.get_rank() == 0:
    torch.save([p.detach() for p in model.parameters()], sys.argv[2])
dist.destroy_process_group()
"""


def test_two_process_gloo_shards_questions_like_gradient_accumulation(tmp_path):
    """Questions sharded across 2 ranks (one each per step) = one process taking 2 per step."""
    single = tiny_model(torch.float32)
    cfg = TrainConfig(lr=1e-2, grad_accum=2, dpo_grouping="question")
    history = train_dpo(single, drawn_pairs(n_questions=3, draws=30), tmp_path / "single", cfg, progress=False)
    assert [m["questions"] for m in history] == [2, 1]  # the last step: rank 1 has no question
    worker = tmp_path / "worker.py"
    here = Path(__file__).resolve()
    worker.write_text(DDP_WORKER.format(paths=[str(here.parent), str(here.parents[1] / "helpers")]))  # this file, crash_resume
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here.parents[2])}
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", port, str(worker), str(tmp_path / "ddp"), str(tmp_path / "ddp.pt")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    for got, want in zip(torch.load(tmp_path / "ddp.pt"), single.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ddp, history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["questions"] == b["questions"]


def test_cli_flag_is_dpo_grouping():
    from scoreflow.train import parse_args

    _, dpo, _, _ = parse_args(["--dpo-grouping", "question"])
    assert dpo == {"dpo_grouping": "question"}
    with pytest.raises(ValueError, match="dpo_grouping"):
        TrainConfig(dpo_grouping="batch")
