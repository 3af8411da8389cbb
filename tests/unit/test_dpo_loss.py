"""Score-DPO / DPO: explicit backward vs autograd (float64), influence, Theorem 2, TRL parity."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from scoreflow.dpo import (
    ScoreDPOFunction,
    dpo_loss,
    implicit_reward,
    influence,
    reward_metrics,
    score_dpo_loss,
    score_dpo_loss_reference,
    theorem2_condition,
)
from scoreflow.dpo.loss import GroupedScoreDPOFunction, grouped_dpo_loss, grouped_score_dpo_loss

DT = torch.float64
BETA = 0.1


def exp_map(s):
    """A user-supplied strictly increasing f: [0,1] -> [0,1]."""
    return torch.expm1(s) / math.expm1(1.0)


# f as passed to the library -> the same f written out for the oracle.
F_CHOICES = {
    "none": (None, lambda s: s),
    "identity": ("identity", lambda s: s),
    "sqrt": ("sqrt", lambda s: s**0.5),
    "square": ("square", lambda s: s * s),
    "callable": (exp_map, exp_map),
}


def plain_score_dpo(pc, pr, rc, rr, s_w, s_l, beta, f, weights):
    """The formula as written in the paper; autograd differentiates it."""
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)
    ell = -torch.log(torch.sigmoid(f(s_w) * r_w - (1 - f(s_l)) * r_l))
    weights = torch.ones_like(ell) if weights is None else weights
    return (weights * ell).sum() / weights.sum()


def random_batch(m, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    ref = -20 + 5 * torch.randn(4, m, generator=g, dtype=DT)
    policy = ref + 10 * torch.randn(4, m, generator=g, dtype=DT)  # r = β·(policy − ref) ~ N(0, 1)
    logps = [policy[0], policy[1], ref[0], ref[1]]
    logps = [x.clone().requires_grad_(requires_grad) for x in logps]
    scores = torch.rand(2, m, generator=g, dtype=DT)
    scores[0, 0], scores[1, 1] = 1.0, 0.0  # the ends of [0, 1]
    weights = torch.rand(m, generator=g, dtype=DT) + 0.1
    return logps, scores[0], scores[1], weights


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def weighted_mean(ell, weights=None):
    """The paper's L = Σλℓ/Σλ over per-pair losses (uniform λ when None), as the trainer forms it."""
    weights = torch.ones_like(ell) if weights is None else weights
    return (weights * ell).sum() / weights.sum()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("f_name", list(F_CHOICES))
def test_score_dpo_backward_matches_autograd_of_plain_formula(f_name, weighted):
    f_lib, f_plain = F_CHOICES[f_name]
    logps, s_w, s_l, weights = random_batch(9, seed=1)
    weights = weights if weighted else None
    ours = weighted_mean(score_dpo_loss(*logps, s_w, s_l, beta=BETA, f=f_lib), weights)
    oracle = plain_score_dpo(*logps, s_w, s_l, BETA, f_plain, weights)
    reference = weighted_mean(score_dpo_loss_reference(*logps, s_w, s_l, beta=BETA, f=f_lib), weights)
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference, oracle, rtol=1e-12, atol=1e-12)
    for g_ours, g_oracle, g_ref in zip(grads(ours, logps), grads(oracle, logps), grads(reference, logps)):
        torch.testing.assert_close(g_ours, g_oracle, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_dpo_backward_matches_autograd_of_plain_formula(weighted):
    logps, _, _, weights = random_batch(9, seed=2)
    weights = weights if weighted else None
    ours = weighted_mean(dpo_loss(*logps, beta=BETA), weights)
    pc, pr, rc, rr = logps
    ell = -torch.log(torch.sigmoid(BETA * (pc - rc) - BETA * (pr - rr)))
    w = torch.ones_like(ell) if weights is None else weights
    oracle = (w * ell).sum() / w.sum()
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
    for g_ours, g_oracle in zip(grads(ours, logps), grads(oracle, logps)):
        torch.testing.assert_close(g_ours, g_oracle, rtol=1e-10, atol=1e-12)


def test_gradcheck_on_the_function():
    logps, s_w, s_l, weights = random_batch(6, seed=3)
    inputs = (*logps, s_w, 1 - s_l, 0.3)
    assert torch.autograd.gradcheck(lambda *x: weighted_mean(ScoreDPOFunction.apply(*x), weights), inputs,
                                    eps=1e-6, atol=1e-8)
    torch.testing.assert_close(ScoreDPOFunction.apply(*inputs), score_dpo_loss_reference(*logps, s_w, s_l, 0.3),
                               rtol=1e-12, atol=1e-12)


def test_stable_for_huge_margins_in_float32():
    # Δ = ±1000: −log σ(Δ) is 0 or 1000; the naive form gives inf / nan here.
    pc = torch.tensor([1e4, -1e4], requires_grad=True)
    zeros = torch.zeros(2)
    loss = weighted_mean(dpo_loss(pc, zeros, zeros, zeros, beta=0.1))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(500.0))  # mean of 0 and 1000
    torch.testing.assert_close(pc.grad, torch.tensor([0.0, -0.05]))  # −β σ(−Δ) / M


def test_gradients_reach_policy_only_when_ref_is_detached():
    logps, s_w, s_l, _ = random_batch(5, seed=4, requires_grad=False)
    pc = logps[0].clone().requires_grad_(True)
    score_dpo_loss(pc, *logps[1:], s_w, s_l).sum().backward()
    assert pc.grad is not None and pc.grad.abs().sum() > 0


def test_errors_name_the_problem():
    logps, s_w, s_l, _ = random_batch(4, seed=5, requires_grad=False)
    with pytest.raises(ValueError, match=r"chosen_scores must lie in \[0, 1\]"):
        score_dpo_loss(*logps, s_w + 1.5, s_l)
    with pytest.raises(ValueError, match="rejected_scores"):
        score_dpo_loss(*logps, s_w, torch.full_like(s_l, float("nan")))
    with pytest.raises(ValueError, match=r"ref_rejected_logps \(3,\)"):
        score_dpo_loss(*logps[:3], logps[3][:3], s_w, s_l)
    with pytest.raises(ValueError, match=r"unknown score map f='cube'"):
        score_dpo_loss(*logps, s_w, s_l, f="cube")
    with pytest.raises(ValueError, match=r"f\(chosen_scores\) must lie in \[0, 1\]"):
        score_dpo_loss(*logps, s_w, s_l, f=lambda s: 2 * s + 0.1)
    rewards, pairs = implicit_reward(logps[0], logps[2], BETA), torch.stack([torch.arange(4)] * 2, 1)
    with pytest.raises(ValueError, match="weights"):  # the pair weights λ enter through influence (and the trainer)
        influence(rewards, s_w, pairs, -torch.ones(4, dtype=DT))
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        influence(rewards, s_w, pairs, torch.ones(5, dtype=DT))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*logps, beta=0.0)
    empty = torch.zeros(0, dtype=DT)
    with pytest.raises(ValueError, match="at least one pair"):
        dpo_loss(empty, empty, empty, empty)


def test_reward_metrics():
    pc, pr = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    zeros = torch.zeros(2)
    metrics = reward_metrics(implicit_reward(pc, zeros, 0.5), implicit_reward(pr, zeros, 0.5))
    torch.testing.assert_close(metrics["reward_margin"], torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(metrics["reward_accuracy"], torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------- influence I(z), Definition 1


def random_pair_set(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g, dtype=DT)
    rewards = 2 * torch.randn(n, generator=g, dtype=DT)
    a, b = torch.randint(0, n, (2, 4 * m), generator=g)
    keep = scores[a] != scores[b]
    a, b = a[keep][:m], b[keep][:m]
    higher = scores[a] > scores[b]
    pairs = torch.stack([torch.where(higher, a, b), torch.where(higher, b, a)], dim=1)  # (m, 2)
    weights = torch.rand(m, generator=g, dtype=DT) + 0.05
    return rewards, scores, pairs, weights


@pytest.mark.parametrize("f_name", ["identity", "sqrt", "callable"])
def test_influence_is_minus_gradient_of_the_weighted_loss(f_name):
    f_lib, f_plain = F_CHOICES[f_name]
    rewards, scores, pairs, weights = random_pair_set(n=8, m=30, seed=6)
    win, lose = pairs[:, 0], pairs[:, 1]
    both_roles = set(win.tolist()) & set(lose.tolist())
    assert len(both_roles) >= 3  # the test exercises responses that win and lose

    # Oracle: L over the rewards directly, differentiated by autograd.
    r = rewards.clone().requires_grad_(True)
    delta = f_plain(scores[win]) * r[win] - (1 - f_plain(scores[lose])) * r[lose]
    loss = (weights * -torch.log(torch.sigmoid(delta))).sum() / weights.sum()
    (grad_r,) = torch.autograd.grad(loss, r)
    ours = influence(rewards, scores, pairs, weights, f=f_lib)
    torch.testing.assert_close(ours, -grad_r, rtol=1e-10, atol=1e-14)

    # Same through score_dpo_loss's explicit backward: logπ = r/β, logπref = 0.
    r = rewards.clone().requires_grad_(True)
    zeros = torch.zeros(len(pairs), dtype=DT)
    loss = weighted_mean(score_dpo_loss(r[win] / BETA, r[lose] / BETA, zeros, zeros, scores[win], scores[lose],
                                        beta=BETA, f=f_lib), weights)
    (grad_r,) = torch.autograd.grad(loss, r)
    torch.testing.assert_close(ours, -grad_r, rtol=1e-10, atol=1e-14)


def test_influence_rejects_bad_pairs():
    rewards, scores = torch.zeros(3, dtype=DT), torch.rand(3, dtype=DT)
    with pytest.raises(ValueError, match="outside"):
        influence(rewards, scores, torch.tensor([[0, 3]]), torch.ones(1, dtype=DT))
    with pytest.raises(ValueError, match=r"\(m, 2\)"):
        influence(rewards, scores, torch.tensor([0, 1]), torch.ones(1, dtype=DT))


# ---------------------------------------------------------------- grouped form: Score-DPO by influence


@pytest.mark.parametrize("f_name", ["identity", "sqrt", "callable", "dpo"])
def test_grouped_loss_is_the_pairwise_loss_with_influence_as_its_gradient(f_name):
    """One question's n responses: L, its gradient and I(z) equal the pairwise form's."""
    rewards, scores, pairs, weights = random_pair_set(n=8, m=30, seed=9)
    ref = -15 + 4 * torch.randn(8, dtype=DT, generator=torch.Generator().manual_seed(10))
    policy = (ref + rewards / BETA).requires_grad_(True)  # (n,) so that β(policy − ref) = rewards
    win, lose = pairs[:, 0], pairs[:, 1]
    if f_name == "dpo":
        ours = weighted_mean(grouped_dpo_loss(policy, ref, pairs, BETA), weights)
        oracle = weighted_mean(dpo_loss(policy[win], policy[lose], ref[win], ref[lose], BETA), weights)
        push = weights / weights.sum() * torch.sigmoid(-(rewards[win] - rewards[lose]))  # Definition 1, c_w = c_l = 1
        infl = torch.zeros_like(rewards).index_add(0, win, push).index_add(0, lose, -push)
    else:
        f_lib, _ = F_CHOICES[f_name]
        ours = weighted_mean(grouped_score_dpo_loss(policy, ref, scores, pairs, BETA, f_lib), weights)
        oracle = weighted_mean(score_dpo_loss(policy[win], policy[lose], ref[win], ref[lose], scores[win],
                                              scores[lose], BETA, f_lib), weights)
        infl = influence(rewards, scores, pairs, weights, f_lib)
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
    (g_ours,), (g_oracle,) = grads(ours, [policy]), grads(oracle, [policy])
    torch.testing.assert_close(g_ours, g_oracle, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_ours, -BETA * infl, rtol=1e-12, atol=1e-15)  # ∂L/∂logπθ(z) = −β I(z)


def test_gradcheck_on_the_grouped_function():
    rewards, scores, pairs, weights = random_pair_set(n=5, m=9, seed=11)
    policy = (rewards / BETA).requires_grad_(True)
    ref = torch.zeros(5, dtype=DT, requires_grad=True)
    c_w, c_l = scores[pairs[:, 0]], 1 - scores[pairs[:, 1]]

    def loss(pol, r):
        return weighted_mean(GroupedScoreDPOFunction.apply(pol, r, pairs, c_w, c_l, BETA), weights)

    assert torch.autograd.gradcheck(loss, (policy, ref), eps=1e-6, atol=1e-8)


def test_grouped_loss_without_pairs_is_zero():
    policy = torch.randn(3, dtype=DT, requires_grad=True)
    no_pairs = torch.zeros(0, 2, dtype=torch.long)
    ell = grouped_score_dpo_loss(policy, torch.zeros(3, dtype=DT), torch.rand(3, dtype=DT), no_pairs, BETA)
    loss = ell.sum()
    loss.backward()
    assert loss.item() == 0 and ell.shape == (0,) and not policy.grad.any()


def test_grouped_loss_errors_name_the_problem():
    logps, scores = torch.zeros(3, dtype=DT), torch.full((3,), 0.5, dtype=DT)
    one_pair = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="outside"):
        grouped_dpo_loss(logps, logps, torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match=r"ref_logps \(2,\)"):
        grouped_dpo_loss(logps, logps[:2], one_pair)
    with pytest.raises(ValueError, match=r"weights must have shape \(1,\)"):  # λ enters through influence
        influence(logps, scores, one_pair, torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="not all zero"):
        influence(logps, scores, one_pair, torch.zeros(1, dtype=DT))
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        grouped_score_dpo_loss(logps, logps, scores + 1, one_pair)


# ---------------------------------------------------------------- Theorem 2


def test_theorem2_condition_by_hand():
    # f = identity. s = 0.5: −2 ≤ r ≤ 2. s = 0: r ≥ −1 only. s = 1: r ≤ 1 only.
    s = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0], dtype=DT)
    r = torch.tensor([2.0, 2.01, -2.0, -2.01, 1e6, -1.01, -1e6, 1.01], dtype=DT)
    expected = torch.tensor([True, False, True, False, True, False, True, False])
    assert torch.equal(theorem2_condition(r, s), expected)
    # f = square at s = 0.5: f = 0.25, so −4/3 ≤ r ≤ 4.
    r = torch.tensor([4.0, 4.01, -1.33, -1.34], dtype=DT)
    assert torch.equal(theorem2_condition(r, torch.full((4,), 0.5, dtype=DT), f="square"),
                       torch.tensor([True, False, True, False]))


def cubic(x, y):
    return (x - y) ** 3


def linear(x, y):
    return x - y


def unnormalised_influence(rewards, scores, f, d):
    """I(z) for one question, all pairs s_w > s_l, weights d(s_w, s_l)·P (P uniform, a constant).

    The weights are recomputed from the scores, so d(s_z, ·) grows and d(·, s_z) shrinks with
    s_z. Theorem 2 is about these unnormalised weights; influence() divides by Σw, which we undo.
    """
    n = len(scores)
    idx = [(i, j) for i in range(n) for j in range(n) if scores[i] > scores[j]]
    pairs = torch.tensor(idx)  # (m, 2)
    weights = torch.stack([d(scores[i], scores[j]) for i, j in idx])  # (m,)
    return influence(rewards, scores, pairs, weights, f=f) * weights.sum()


@pytest.mark.parametrize("d", [cubic, linear])
@pytest.mark.parametrize("f_name", ["identity", "sqrt", "square"])
def test_theorem2_influence_increases_with_score_inside_condition(f_name, d):
    f_lib, f_plain = F_CHOICES[f_name]
    g = torch.Generator().manual_seed(7)
    for _ in range(60):
        n = int(torch.randint(2, 7, (1,), generator=g))
        scores = torch.rand(n, generator=g, dtype=DT)
        rewards = 3 * torch.randn(n, generator=g, dtype=DT)  # others: anywhere
        z = int(torch.randint(0, n, (1,), generator=g))
        s_lo = scores[z]
        above = scores[scores > s_lo]
        ceiling = above.min() if len(above) else torch.tensor(1.0, dtype=DT)
        s_hi = s_lo + (0.05 + 0.9 * torch.rand((), generator=g, dtype=DT)) * (ceiling - s_lo)  # order kept
        # r_z inside the condition on all of [s_lo, s_hi]: −1/(1 − f(s_lo)) ≤ r_z ≤ 1/f(s_hi).
        lo, hi = -1 / (1 - f_plain(s_lo)), 1 / f_plain(s_hi)
        rewards[z] = lo + (hi - lo) * torch.rand((), generator=g, dtype=DT)
        raised = scores.clone()
        raised[z] = s_hi
        assert theorem2_condition(rewards, scores, f=f_lib)[z] and theorem2_condition(rewards, raised, f=f_lib)[z]
        before = unnormalised_influence(rewards, scores, f_lib, d)[z]
        after = unnormalised_influence(rewards, raised, f_lib, d)[z]
        assert after > before, (n, z, scores.tolist(), rewards.tolist(), float(s_hi))


@pytest.mark.parametrize(
    "scores, rewards, z, s_raised",
    [
        # z wins against a score-0 loser with r_z = 10 > 1/f(s_z): σ(−Δ) collapses as f(s_z)·r_z grows.
        ([0.9, 0.0], [10.0, 0.0], 0, 0.95),
        # z loses to a score-1 winner with r_z = −10 < −1/(1 − f(s_z)).
        ([1.0, 0.0], [0.0, -10.0], 1, 0.05),
    ],
)
def test_theorem2_monotonicity_fails_outside_condition(scores, rewards, z, s_raised):
    scores, rewards = torch.tensor(scores, dtype=DT), torch.tensor(rewards, dtype=DT)
    raised = scores.clone()
    raised[z] = s_raised
    assert not theorem2_condition(rewards, scores)[z]
    before = unnormalised_influence(rewards, scores, None, cubic)[z]
    after = unnormalised_influence(rewards, raised, None, cubic)[z]
    assert after < before


# ---------------------------------------------------------------- TRL parity


def trl_sigmoid_dpo_loss(pc, pr, rc, rr, beta):
    """TRL 1.16's own DPOTrainer._compute_loss (loss_type="sigmoid") on given log-probs.

    _compute_loss needs a trainer and a model; we pass the smallest stand-ins. Each sequence
    has one completion token whose log-prob is the whole response's log-prob, and reference
    log-probs come precomputed in the batch (precompute_ref_log_probs=True).
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    logps = torch.cat([pc, pr])[:, None]  # (2M, 1): batch is [chosen, rejected]
    outputs = SimpleNamespace(log_probs=logps, entropy=torch.zeros_like(logps),
                              mean_logits=torch.zeros_like(logps), is_top1=torch.zeros_like(logps, dtype=torch.bool))

    def model(**kwargs):
        return outputs

    model.training = True
    trainer = SimpleNamespace(
        model=model, beta=beta, loss_types=["sigmoid"], loss_weights=[1.0], f_divergence_type="reverse_kl",
        ld_alpha=None, precompute_ref_logps=True, use_weighting=False, aux_loss_enabled=False,
        accelerator=SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    two_m = logps.shape[0]
    inputs = {
        "input_ids": torch.zeros(two_m, 2, dtype=torch.long),
        "attention_mask": torch.ones(two_m, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * two_m),  # token 0 prompt, token 1 completion
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def test_dpo_loss_matches_trl_sigmoid_loss():
    pytest.importorskip("trl")
    logps, _, _, _ = random_batch(8, seed=8)
    ours = dpo_loss(*logps, beta=BETA).mean()
    theirs = trl_sigmoid_dpo_loss(*logps, beta=BETA)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for g_ours, g_theirs in zip(grads(ours, logps[:2]), grads(theirs, logps[:2])):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
