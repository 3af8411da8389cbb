"""Exact speculative decoding with prompt-lookup drafts: the same greedy tokens as plain decoding,
sampled tokens with the same distribution, and a cache that forgets rejected drafts."""

import pytest
import torch

from scoreflow.engine import Engine, KVCache, SamplingParams
from scoreflow.engine.draft import NgramIndex
from scoreflow.engine.sampling import filtered_probs, verify_drafts

CODE = ("class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        self.name = name\n"
        "        self.llm = create_llm_instance(llm_config)\n        self.custom = operator.Custom(self.llm)\n")


def chat(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}]))


@pytest.fixture(scope="module")
def prompts(default_tokenizer):
    return [chat(default_tokenizer, f"Repeat this code exactly, then add a __call__ method:\n{CODE}"),
            chat(default_tokenizer, "What is 12 * 7? Explain step by step."),
            chat(default_tokenizer, f"Explain what this class does:\n{CODE}")]


def test_ngram_index_drafts_what_followed_the_longest_matching_suffix():
    index = NgramIndex([5, 1, 2, 3, 4, 9, 2, 3, 7, 8, 1, 2, 3])
    assert index.draft(2) == [4, 9]  # "1 2 3" last seen followed by 4 9 (not "2 3" -> 7 8)
    index.extend([4])
    assert index.draft(5) == [9, 2, 3, 7, 8]
    index.extend([6])
    assert index.draft(3) == []  # 6 never appeared before
    assert NgramIndex([3, 3]).draft(4) == [3]


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.8, 0), (1.3, 1.0, 3)])
def test_accept_or_resample_gives_exactly_the_filtered_distribution(temperature, top_p, top_k):
    """Chi-square over 40,000 draws: the emitted token (the draft if accepted, else the
    residual sample) follows p, whichever token is drafted, including one p excludes."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0])
    probs, ids = filtered_probs(logits[None], torch.tensor([temperature]), torch.tensor([top_p]),
                                torch.tensor([top_k]))
    p = torch.zeros(6, dtype=torch.float64).index_add(0, ids[0], probs[0].double())
    p /= p.sum()
    N = 40_000
    params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)] * N
    for draft in (0, 2, 5):  # the most likely token, a middling one, one that top-p/top-k may drop
        accept, tokens = verify_drafts(logits.expand(N, -1), torch.full((N,), draft), params,
                                       list(range(N)), [draft] * N)
        emitted = torch.where(accept, torch.tensor(draft), tokens)
        counts = torch.bincount(emitted, minlength=6).double()
        kept = p > 0
        chi2 = (((counts - N * p)[kept] ** 2) / (N * p[kept])).sum().item()
        assert counts[~kept].sum() == 0
        assert chi2 < 22.5, (draft, chi2, counts.tolist(), (N * p).tolist())  # df <= 5, p = 0.0004
        assert abs(accept.double().mean().item() - p[draft].item()) < 0.01  # accepted with probability p(x)


def test_greedy_is_identical_with_and_without_speculation(default_model, default_tokenizer, prompts):
    """Batched (with n=2 and stop strings and logprobs) and alone: the same tokens, text, finish
    reasons, and log-probs within float tolerance; and drafts were really accepted."""
    plain = Engine(default_model, default_tokenizer, max_batch=8, max_seq_len=512, draft_tokens=0)
    spec = Engine(default_model, default_tokenizer, max_batch=8, max_seq_len=512)
    params = [SamplingParams(max_tokens=48, ignore_eos=True, logprobs=2), SamplingParams(max_tokens=40, n=2),
              SamplingParams(max_tokens=48, stop=("workflow object",), logprobs=0)]
    want, got = plain.generate(prompts, params), spec.generate(prompts, params)
    alone = [spec.generate([prompts[0]], params[0])[0]]
    for a, b in zip(want + want[:1], got + alone):
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
        if a.logprobs is not None:
            assert [t.token_id for t in a.logprobs] == [t.token_id for t in b.logprobs]
            assert max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3
    assert want[-1].finish_reason == "stop"  # the stop string cut it
    stats = spec.draft_stats
    assert stats.accepted > 20 and stats.drafted > stats.accepted  # drafts accepted, and some rejected


def test_seeded_sampling_with_speculation_is_reproducible_and_batch_independent(default_model, default_tokenizer,
                                                                               prompts):
    spec = Engine(default_model, default_tokenizer, max_batch=8, max_seq_len=512)
    p = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=32, seed=7)
    alone = spec.generate([prompts[0]], p)[0].token_ids
    assert spec.generate([prompts[2], prompts[0]], p)[1].token_ids == alone
    assert spec.generate([prompts[0]], p)[0].token_ids == alone
    assert spec.draft_stats.accepted > 0


def test_cache_forgets_rejected_drafts(default_model, default_tokenizer, prompts):
    """Mid-generation, after verify passes that rejected drafts, the cache holds exactly the
    tokens generated so far: the same keys/values as a plain forward over them, nothing else."""
    spec = Engine(default_model, default_tokenizer, max_batch=4, max_seq_len=512)
    req = spec.submit(prompts[0], SamplingParams(max_tokens=200, ignore_eos=True))
    stats, rejected = spec.draft_stats, 0
    while not (len(req.seqs[0].ids) >= 30 and stats.drafted - stats.accepted > rejected):  # stop right after a rejection
        rejected = stats.drafted - stats.accepted
        spec.step()
    assert stats.accepted > 0
    tokens = prompts[0] + req.seqs[0].ids[:-1]  # the last token is fed at the next step
    L = len(tokens)
    assert spec.cache.lengths[0] == L
    assert spec.cache.valid[0, :L].all() and not spec.cache.valid[0, L:].any()
    ref = KVCache.for_model(default_model, batch=1, max_len=L)
    with torch.inference_mode():
        default_model(torch.tensor([tokens]), cache=ref)
    torch.testing.assert_close(spec.cache.k[:, 0, :, :L], ref.k[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spec.cache.v[:, 0, :, :L], ref.v[:, 0], rtol=1e-4, atol=1e-4)
    spec.cancel(req)
    spec.step()


@pytest.mark.parametrize("rows,per_row", [(1, 4), (4, 2), (8, 0)])
def test_drafts_per_row_shrink_as_rows_grow(default_model, default_tokenizer, prompts, rows, per_row):
    """A verify pass holds at most VERIFY_POSITIONS = 12 rows x (1 + drafts): 4 drafts a row at
    1 row, 2 at 4 rows, none at 8 (plain decoding)."""
    engine = Engine(default_model, default_tokenizer, max_batch=8, max_seq_len=512)
    engine.generate([prompts[0]] * rows, SamplingParams(max_tokens=24, ignore_eos=True))
    stats = engine.draft_stats
    assert stats.drafted <= per_row * rows * stats.verify_steps
    assert (stats.verify_steps > 0) == (per_row > 0)
