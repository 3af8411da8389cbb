"""Score-DPO (ScoreFlow, PAPERS.md §S5) and plain DPO, with a hand-derived backward.

Notation, one row per preference pair m = (w, l) — w the winner, the higher-scored response:

    r         = β (log πθ(y|x) − log πref(y|x))    implicit reward (sum of token log-probs)
    s ∈ [0,1]                                      evaluator score of a response
    f         : [0,1] → [0,1], strictly increasing  score map (paper: f(x) = x)
    Δ_{w,l}   = f(s_w) r_w − (1 − f(s_l)) r_l       score-weighted margin
    ℓ_{w,l}   = −log σ(Δ_{w,l}) = softplus(−Δ_{w,l})  what every loss here returns, per pair
    L         = Σ_m λ_m ℓ_m / Σ_m λ_m               weighted mean over the pairs (the trainer's)

The pair weights λ_m carry P*(w,l) ∝ d(s_w, s_l) P(w,l) (see pairs.py): either the pairs
were drawn from P* (uniform λ_m) or every pair appears once with λ_m = P*(w,l). The losses
return ℓ (one entry per pair) and leave the weighting to the caller, which normalises once
(trainer.py).
Plain DPO is the special case f(s_w) = 1 and 1 − f(s_l) = 1, so Δ = r_w − r_l.

Per-sample influence (Definition 1), I(z) = −∂L/∂r_z:

    I(z) =   Σ_l P*(z,l) · f(s_z)       · σ(−Δ_{z,l})      (z as the winner)
           − Σ_w P*(w,z) · (1 − f(s_z)) · σ(−Δ_{w,z})      (z as the loser)

Theorem 2: I(z) is strictly increasing in s_z when −1/(1 − f(s_z)) ≤ r_z ≤ 1/f(s_z).

Score-DPO by influence (the grouped form). L depends on θ only through the implicit rewards
r_z of the distinct responses z, and ∂r_z/∂θ = β ∇θ log πθ(z|x), so by the chain rule

    −∇θ L = Σ_z I(z) · β ∇θ log πθ(z | x)

with I(z) the per-sample influence above: the paper's Definition 1 is exactly −∂L/∂r_z, the
scalar through which Theorem 2 shows a higher score pushes its response up harder. Every pair of
a question shares the question's prompt, so one pass over the prompt and its k distinct
responses (batch.pack) gives the exact gradient of all its pairs — GroupedScoreDPOFunction
below, used by group.py — instead of one pass per pair. Its backward receives ∂L/∂ℓ_m = λ_m/Σλ
from the caller's weighted mean and sends −β I(z) to each log πθ(z|x), I(z) computed from
exactly those weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .config import SCORE_MAPS, ScoreMap


class ScoreDPOFunction(torch.autograd.Function):
    """ℓ_m = softplus(−Δ_m), Δ_m = c_w,m r_w,m − c_l,m r_l,m, one entry per pair.

    Inputs, all (M,): policy and reference log-probs of the chosen (w) and rejected (l)
    responses, the coefficients c_w = f(s_w) and c_l = 1 − f(s_l); then the float β.
    Coefficients are constants (no gradient). Output ℓ (M,).

    Backward, by hand, from g_m = ∂L/∂ℓ_m (the caller's weights). With ∂ softplus(−Δ)/∂Δ = −σ(−Δ):

        ∂L/∂Δ_m         = −g_m σ(−Δ_m)
        ∂L/∂logπθ(y_w)  =  β c_w ∂L/∂Δ_m      ∂L/∂logπref(y_w) = −β c_w ∂L/∂Δ_m
        ∂L/∂logπθ(y_l)  = −β c_l ∂L/∂Δ_m      ∂L/∂logπref(y_l) =  β c_l ∂L/∂Δ_m
    """

    @staticmethod
    def forward(ctx, policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor,
                c_w: Tensor, c_l: Tensor, beta: float) -> Tensor:
        delta = c_w * implicit_reward(policy_w, ref_w, beta) - c_l * implicit_reward(policy_l, ref_l, beta)  # (M,)
        ctx.save_for_backward(torch.sigmoid(-delta), c_w, c_l)  # σ(−Δ), stable for any Δ
        ctx.beta = beta
        return F.softplus(-delta)  # (M,) softplus(−Δ) = −log σ(Δ), stable for any Δ

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ell: Tensor):
        sigmoid, c_w, c_l = ctx.saved_tensors
        grad_delta = -grad_ell * sigmoid  # (M,) ∂L/∂Δ
        grad_policy_w = ctx.beta * c_w * grad_delta  # (M,)
        grad_policy_l = -ctx.beta * c_l * grad_delta  # (M,)
        return grad_policy_w, grad_policy_l, -grad_policy_w, -grad_policy_l, None, None, None


def score_dpo_loss_reference(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, s_w: Tensor,
                             s_l: Tensor, beta: float = 0.1, f: str | ScoreMap | None = None) -> Tensor:
    """ℓ (M,) in plain autograd: the oracle that ScoreDPOFunction's hand-written backward is tested against."""
    c_w, c_l = apply_score_map(s_w, f), 1 - apply_score_map(s_l, f)
    delta = c_w * implicit_reward(policy_w, ref_w, beta) - c_l * implicit_reward(policy_l, ref_l, beta)
    return F.softplus(-delta)


class GroupedScoreDPOFunction(torch.autograd.Function):
    """One question's per-pair ℓ_m as a function of its n responses' log-probs.

    Inputs: policy and reference log-probs (n,), one per distinct response; pairs (m, 2) long,
    (winner, loser) indices into them; the coefficients c_w = f(s_w), c_l = 1 − f(s_l) (m,);
    the float β. Output ℓ (m,), Δ_m = c_w,m r_w − c_l,m r_l.

    Backward, by hand, from g_m = ∂L/∂ℓ_m: with P* = g, ∂L/∂r_z = −I(z) (Definition 1), so
    ∂L/∂logπθ(z) = −β I(z) and ∂L/∂logπref(z) = +β I(z). The gradient reaching the model is then
    Σ_z −β I(z) ∇θ log πθ(z|x): each response's score gradient times its influence.
    """

    @staticmethod
    def forward(ctx, policy: Tensor, ref: Tensor, pairs: Tensor, c_w: Tensor, c_l: Tensor, beta: float) -> Tensor:
        delta = _margin(implicit_reward(policy, ref, beta), pairs, c_w, c_l)  # (m,)
        ctx.save_for_backward(torch.sigmoid(-delta), pairs, c_w, c_l)
        ctx.beta, ctx.n = beta, policy.shape[0]
        return F.softplus(-delta)  # (m,)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ell: Tensor):
        sigmoid, pairs, c_w, c_l = ctx.saved_tensors
        infl = _scatter_influence(grad_ell * sigmoid, pairs, c_w, c_l, ctx.n)  # (n,) I(z) under P* = g
        grad_policy = -ctx.beta * infl  # (n,)
        return grad_policy, -grad_policy, None, None, None, None


def implicit_reward(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """r = β (log πθ(y|x) − log πref(y|x)), elementwise."""
    return beta * (policy_logps - ref_logps)


def score_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    beta: float = 0.1,
    f: str | ScoreMap | None = None,
) -> Tensor:
    """Score-DPO per pair: ℓ (M,) = −log σ(f(s_w) r_w − (1 − f(s_l)) r_l).

    All inputs are (M,), one entry per pair; log-probs are sums over the response tokens.
    `f` is None (identity), a name in SCORE_MAPS, or a callable on tensors. Gradients flow to
    the log-probs only, never to the scores. The paper's L is the caller's weighted mean
    Σλℓ/Σλ (λ uniform for pairs drawn from P*).
    """
    _check_pair_shapes(policy_chosen_logps=policy_chosen_logps,
                       policy_rejected_logps=policy_rejected_logps,
                       ref_chosen_logps=ref_chosen_logps,
                       ref_rejected_logps=ref_rejected_logps,
                       chosen_scores=chosen_scores,
                       rejected_scores=rejected_scores)
    c_w = apply_score_map(chosen_scores, f, "chosen_scores")  # (M,) f(s_w)
    c_l = 1 - apply_score_map(rejected_scores, f, "rejected_scores")  # (M,) 1 − f(s_l)
    return _apply(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, c_w, c_l, beta)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """Plain DPO per pair: ℓ (M,) = −log σ(r_w − r_l), Score-DPO with both coefficients 1."""
    _check_pair_shapes(policy_chosen_logps=policy_chosen_logps,
                       policy_rejected_logps=policy_rejected_logps,
                       ref_chosen_logps=ref_chosen_logps,
                       ref_rejected_logps=ref_rejected_logps)
    ones = torch.ones_like(policy_chosen_logps)  # (M,)
    return _apply(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, ones, ones, beta)


def influence(
    rewards: Tensor,
    scores: Tensor,
    pairs: Tensor,
    weights: Tensor,
    f: str | ScoreMap | None = None,
) -> Tensor:
    """Per-sample influence I(z) = −∂L/∂r_z (Definition 1) of L = Σ_m λ_m ℓ_m / Σ_m λ_m.

    rewards (n,): β-scaled implicit rewards r. scores (n,): s ∈ [0,1].
    pairs (m, 2) long: (winner, loser) indices into the n responses. weights (m,): λ.
    Returns I (n,), detached; a response in no pair has I = 0. Positive I: training raises
    z's likelihood, since ∂L/∂θ = −Σ_z I(z) β ∇θ log πθ(y_z|x). Cost-aware scores
    (--cost-weight, optimize/cost.py) change the s given here, never this formula: a solved
    workflow keeps s' ≥ an unsolved one's, so Theorem 2's ordering of I by score still puts
    no wrong workflow above a right one (the argument is in that module's docstring).

    Theorem 2 is stated for the unnormalised weights d(s_w, s_l) P(w, l); the division by
    Σλ is one positive factor shared by every z, so multiply by Σλ to compare across scores.
    """
    n = rewards.shape[0]
    if rewards.dim() != 1 or scores.shape != rewards.shape:
        raise ValueError(f"rewards and scores must both be (n,); got rewards {tuple(rewards.shape)}, "
                         f"scores {tuple(scores.shape)}")
    _check_pair_indices(pairs, n)
    lam = _pair_weights(weights, pairs.shape[0], rewards)  # (m,)
    p = lam / lam.sum()  # (m,) P*(w,l) as realised by the weights
    r = rewards.detach()  # (n,)
    c_w, c_l = _score_coefficients(scores, pairs, f, r.dtype)  # (m,), (m,)
    push = p * torch.sigmoid(-_margin(r, pairs, c_w, c_l))  # (m,) P*(w,l) σ(−Δ_{w,l})
    return _scatter_influence(push, pairs, c_w, c_l, r.shape[0])


def grouped_score_dpo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    scores: Tensor,
    pairs: Tensor,
    beta: float = 0.1,
    f: str | ScoreMap | None = None,
) -> Tensor:
    """Score-DPO over all pairs of one question, by influence: ℓ (m,).

    policy_logps, ref_logps, scores (n,): per distinct response z, its summed log-probs under
    πθ and πref and its score s_z. pairs (m, 2) long: (winner, loser) indices, s_w > s_l.
    Returns ℓ_m for each pair (the same values as score_dpo_loss on the m pairs). Its
    backward sends −β I(z) to log πθ(z|x), I computed from the weights the caller puts on ℓ,
    so (λ·ℓ).sum().backward() through one packed forward gives Σ_m λ_m ∇ℓ_m exactly.
    A question with no pair (m = 0) gives an empty ℓ and zero gradients.
    """
    _check_group(policy_logps, ref_logps, pairs, scores=scores)
    c_w, c_l = _score_coefficients(scores, pairs, f, policy_logps.dtype)  # (m,), (m,)
    return _apply_grouped(policy_logps, ref_logps, pairs, c_w, c_l, beta)


def grouped_dpo_loss(policy_logps: Tensor, ref_logps: Tensor, pairs: Tensor, beta: float = 0.1) -> Tensor:
    """Plain DPO over all pairs of one question, by influence: grouped_score_dpo_loss with both
    coefficients 1 (Δ = r_w − r_l); same inputs, no scores."""
    _check_group(policy_logps, ref_logps, pairs)
    ones = torch.ones(pairs.shape[0], dtype=policy_logps.dtype, device=policy_logps.device)  # (m,)
    return _apply_grouped(policy_logps, ref_logps, pairs, ones, ones, beta)


def theorem2_condition(rewards: Tensor, scores: Tensor, f: str | ScoreMap | None = None) -> Tensor:
    """Per response (n,), whether −1/(1 − f(s)) ≤ r ≤ 1/f(s) holds (Theorem 2).

    Checked as f(s) r ≤ 1 and (1 − f(s)) r ≥ −1, which also covers f(s) ∈ {0, 1}
    (an infinite bound). Where it holds, I(z) strictly increases with s_z.
    """
    if rewards.shape != scores.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and scores {tuple(scores.shape)} must match")
    fs = apply_score_map(scores, f, "scores")
    return (fs * rewards <= 1) & ((1 - fs) * rewards >= -1)


def reward_metrics(r_w: Tensor, r_l: Tensor) -> dict[str, Tensor]:
    """Per-pair (M,) diagnostics from the implicit rewards, detached: margin r_w − r_l and accuracy [r_w > r_l]."""
    r_w, r_l = r_w.detach(), r_l.detach()
    return {"reward_margin": r_w - r_l, "reward_accuracy": (r_w > r_l).to(r_w.dtype)}


def apply_score_map(scores: Tensor, f: str | ScoreMap | None, name: str = "scores") -> Tensor:
    """f(s) for scores s ∈ [0,1], detached; ValueError if s or f(s) leaves [0, 1]."""
    _check_unit_interval(scores, name)
    if f is None:
        f = "identity"
    if isinstance(f, str):
        if f not in SCORE_MAPS:
            raise ValueError(f"unknown score map f={f!r}; choose one of {sorted(SCORE_MAPS)} or pass a callable")
        f = SCORE_MAPS[f]
    fs = f(scores.detach())
    if not isinstance(fs, Tensor) or fs.shape != scores.shape:
        raise ValueError(f"f must map a tensor of shape {tuple(scores.shape)} to one of the same shape")
    _check_unit_interval(fs, f"f({name})", slack=1e-6)
    return fs.clamp(0, 1)  # removes rounding error only, e.g. f(1) = 1 + 2e-16


def _apply(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor,
           c_w: Tensor, c_l: Tensor, beta: float) -> Tensor:
    if not policy_w.is_floating_point():
        raise ValueError(f"log-probs must be floating point; got {policy_w.dtype}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if policy_w.shape[0] == 0:
        raise ValueError("need at least one pair; got M = 0")
    cast = dict(dtype=policy_w.dtype, device=policy_w.device)
    return ScoreDPOFunction.apply(policy_w, policy_l, ref_w, ref_l, c_w.to(**cast), c_l.to(**cast), float(beta))


def _score_coefficients(scores: Tensor, pairs: Tensor, f: str | ScoreMap | None,
                        dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(f(s_w), 1 − f(s_l)), each (m,), for the (winner, loser) index pairs (m, 2)."""
    fs = apply_score_map(scores, f, "scores").to(dtype)  # (n,) f(s)
    return fs[pairs[:, 0]], 1 - fs[pairs[:, 1]]


def _margin(r: Tensor, pairs: Tensor, c_w: Tensor, c_l: Tensor) -> Tensor:
    """Δ_{w,l} (m,) = c_w r_w − c_l r_l from the rewards r (n,) of the (winner, loser) index pairs."""
    return c_w * r[pairs[:, 0]] - c_l * r[pairs[:, 1]]


def _scatter_influence(push: Tensor, pairs: Tensor, c_w: Tensor, c_l: Tensor, n: int) -> Tensor:
    """I (n,): Σ over the pairs z wins of push·f(s_z), minus Σ over those it loses of push·(1 − f(s_z))."""
    return (push.new_zeros(n)
            .index_add_(0, pairs[:, 0], push * c_w)  # z as the winner
            .index_add_(0, pairs[:, 1], -push * c_l))  # z as the loser


def _apply_grouped(policy: Tensor, ref: Tensor, pairs: Tensor, c_w: Tensor, c_l: Tensor, beta: float) -> Tensor:
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    cast = dict(dtype=policy.dtype, device=policy.device)
    return GroupedScoreDPOFunction.apply(policy, ref.to(**cast), pairs, c_w.to(**cast), c_l.to(**cast), float(beta))


def _check_group(policy: Tensor, ref: Tensor, pairs: Tensor, **per_response: Tensor) -> None:
    """One question: (n,) log-probs (and scores), (m, 2) pairs into them; m may be 0."""
    if not policy.is_floating_point():
        raise ValueError(f"log-probs must be floating point; got {policy.dtype}")
    shapes = {name: tuple(t.shape) for name, t in dict(policy_logps=policy, ref_logps=ref, **per_response).items()}
    if policy.dim() != 1 or len(set(shapes.values())) != 1:
        raise ValueError(f"per-response inputs must be 1-D of the same shape (n,), one entry per distinct "
                         f"response; got {', '.join(f'{name} {s}' for name, s in shapes.items())}")
    _check_pair_indices(pairs, policy.shape[0])


def _check_pair_indices(pairs: Tensor, n: int) -> None:
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.dtype != torch.long:
        raise ValueError(f"pairs must be a long tensor of shape (m, 2) holding (winner, loser) indices; "
                         f"got {pairs.dtype} {tuple(pairs.shape)}")
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs holds indices outside [0, {n}) for {n} responses")


def _pair_weights(weights: Tensor, m: int, like: Tensor) -> Tensor:
    """Validated, detached (m,) pair weights λ in `like`'s dtype."""
    if m == 0:
        raise ValueError("need at least one pair; got M = 0")
    if weights.shape != (m,):
        raise ValueError(f"weights must have shape ({m},), one per pair; got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be finite, >= 0 and not all zero")
    return weights.detach().to(dtype=like.dtype, device=like.device)


def _check_pair_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        listed = ", ".join(f"{name} {s}" for name, s in shapes.items())
        raise ValueError(f"all inputs must be 1-D of the same shape (M,), one entry per pair; got {listed}")


def _check_unit_interval(x: Tensor, name: str, slack: float = 0.0) -> None:
    inside = (x >= -slack) & (x <= 1 + slack)  # False for NaN too
    if not inside.all():
        bad = x[~inside]
        raise ValueError(f"{name} must lie in [0, 1]; got {bad.numel()} value(s) outside, e.g. {bad[0].item()}")
