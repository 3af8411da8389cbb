"""Token sampling: greedy, temperature, top-k, top-p, with per-request seeds, as pure functions.

Reproducibility without per-request generators: the uniform number that picks token t of a
request is a hash of (seed, t) (SplitMix64), so the same seed and parameters give the same
tokens whatever else shares the batch, and a whole batch samples in a few tensor ops.
A token is drawn by inverse CDF over the filtered distribution:

    p = softmax(logits / T) -> keep top-k ranks and the smallest top-p prefix -> renormalise
    token = first rank whose cumulative probability exceeds u * Σ kept,   u = hash(seed, t)

A temperature below GREEDY_BELOW is greedy. Sampling refuses non-finite logits or
probabilities (FloatingPointError, which fails the batch's requests with that message) rather
than draw garbage tokens from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MASK64 = (1 << 64) - 1
CANDIDATES = 1024  # tokens ranked per row before falling back to a sort of the whole vocabulary
# Below this, logits / T overflow float32 for ordinary logits (30 / 1e-40 > 3.4e38: inf - inf =
# NaN), and long before it the distribution is one-hot: greedy is the exact limit.
GREEDY_BELOW = 1e-5
ACCEPT_SALT = 0x5EC0_DEC0_DE  # the acceptance test of a draft uses its own uniform stream


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    logprobs: int | None = None  # None: off; 0: the sampled token's; k: plus the top-k alternatives
    ignore_eos: bool = False  # keep going past EOS (benchmarks, parity tests)

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is not None:
            object.__setattr__(self, "stop", tuple(self.stop))
        checks = [(self.n >= 1, "n must be >= 1"), (self.temperature >= 0, "temperature must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"), (0 <= self.top_k <= 1 << 31, "top_k must be in [0, 2^31]"),
                  (self.max_tokens >= 1, "max_tokens must be >= 1"),
                  (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
                  (not self.stop or all(isinstance(s, str) and s for s in self.stop),
                   "stop must be non-empty strings")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (got {self})")


def splitmix64(x: int) -> int:
    """One SplitMix64 output for state x (Python ints, exact 64-bit arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniforms(seeds: list[int], steps: list[int]) -> torch.Tensor:
    """(B,) float64 in [0, 1): u_b = hash(seed_b, step_b), independent of the batch."""
    return torch.tensor([splitmix64(splitmix64(s) ^ t) >> 11 for s, t in zip(seeds, steps)],
                        dtype=torch.float64) / float(1 << 53)


def filtered_probs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                   top_k: torch.Tensor, candidates: int = CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted, filtered, unnormalised probabilities and their token ids.

    logits (B, V) fp32; temperature/top_p (B,) float (> 0), top_k (B,) long (0 = off).
    Returns probs (B, W) in descending order with filtered ranks set to 0, and ids (B, W).
    Only the `candidates` most likely tokens are ranked (a partial top-k, not a sort of the
    vocabulary) when that provably holds every kept token: top_k <= candidates, or the
    candidates' mass already reaches top_p. Other rows are sorted in full (W = V then); the
    choice depends on the row alone, so sampling stays independent of the batch.
    """
    probs = (logits / temperature[:, None]).softmax(-1)  # (B, V)
    V = probs.shape[-1]
    n = min(V, candidates)
    probs_n, ids = probs.topk(n, -1)  # (B, n), descending
    reach = probs_n.cumsum(-1)[:, -1]  # the candidates' mass, summed as the keep rule below sums it
    wide = (reach < top_p) & ((top_k == 0) | (top_k > n)) & (n < V)  # (B,) rows to sort in full
    if wide.any():  # a flat distribution (or top_p = 1): its nucleus reaches past the candidates
        full, full_ids = probs[wide].sort(-1, descending=True)
        probs, ids = F.pad(probs_n, (0, V - n)), F.pad(ids, (0, V - n))
        probs[wide], ids[wide] = full, full_ids
    else:
        probs = probs_n
    rank = torch.arange(probs.shape[-1], device=probs.device)
    top_k = top_k.clamp(max=probs.shape[-1])
    keep = (top_k[:, None] == 0) | (rank < top_k[:, None])  # top-k ranks
    before = probs.cumsum(-1) - probs  # mass strictly before each rank
    keep &= before < top_p[:, None]  # smallest prefix reaching top_p (rank 0 always kept)
    return probs * keep, ids


def sample(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int],
           steps: list[int]) -> torch.Tensor:
    """One token per row: logits (B, V) fp32 -> (B,) long."""
    no_draft = torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
    return verify_drafts(logits, no_draft, params, seeds, steps)[1]


def verify_drafts(logits: torch.Tensor, drafts: torch.Tensor, params: list[SamplingParams], seeds: list[int],
                  steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling against a point-mass draft, one position per row:

        accept draft x with probability p(x); else draw from p with x removed, renormalised

    so the token that comes out is distributed exactly as p: P(x) = p(x), and for y != x,
    P(y) = (1 - p(x)) p(y) / (1 - p(x)) = p(y). p is the filtered distribution `sample` draws
    from (temperature, top-k, top-p); a greedy row accepts x iff it is the argmax.
    logits (B, V) fp32; drafts (B,) long, -1 where a position has no draft (then this is plain
    sampling, with the same uniform as `sample`). Returns accept (B,) bool and the token to
    emit where the draft is rejected or absent (B,) long.
    """
    _check_finite(logits, "the model's logits")
    tokens = logits.argmax(-1)
    accept = tokens == drafts
    hot = [i for i, p in enumerate(params) if p.temperature >= GREEDY_BELOW]
    if not hot:
        return accept, tokens
    rows = torch.tensor(hot, device=logits.device)
    dev = dict(device=logits.device)
    probs, ids = filtered_probs(
        logits[rows], torch.tensor([params[i].temperature for i in hot], **dev),
        torch.tensor([params[i].top_p for i in hot], **dev), torch.tensor([params[i].top_k for i in hot], **dev))
    _check_finite(probs, "the sampling probabilities")
    probs = probs.double()
    is_draft = ids == drafts[rows, None]  # (b, W)
    p_draft = (probs * is_draft).sum(-1) / probs.sum(-1)  # (b,) 0 where there is no draft
    u_accept = uniforms([seeds[i] ^ ACCEPT_SALT for i in hot], [steps[i] for i in hot]).to(logits.device)
    accept[rows] = u_accept < p_draft
    rest = probs.masked_fill(is_draft, 0.0)
    rest = torch.where(rest.sum(-1, keepdim=True) > 0, rest, probs)  # all mass on x: x is always accepted
    cdf = rest.cumsum(-1)  # (b, W)
    u = uniforms([seeds[i] for i in hot], [steps[i] for i in hot]).to(logits.device) * cdf[:, -1]
    rank = torch.searchsorted(cdf, u[:, None], right=True).clamp(max=cdf.shape[-1] - 1)  # (b, 1)
    tokens[rows] = ids.gather(-1, rank).squeeze(-1)
    return accept, tokens


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Raise instead of sampling from NaN or infinity (x: (B, V))."""
    bad = (~torch.isfinite(x)).any(-1)
    if bad.any():
        raise FloatingPointError(f"sampling: {what} are not finite (NaN or infinity) in {int(bad.sum())} of "
                                 f"{len(bad)} rows; refusing to sample from them")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top_n: int):
    """Log-probabilities of the model's raw distribution (before temperature / filtering):
    (B,) of the chosen tokens, and (B, top_n) values + ids of the most likely alternatives."""
    logp = logits.log_softmax(-1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
    top = logp.topk(top_n, -1) if top_n else None
    return chosen, top
