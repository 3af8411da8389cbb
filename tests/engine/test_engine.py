"""Engine: greedy parity with transformers, batch independence, seeded sampling, top-p/top-k
statistics, stop strings, prefix sharing and continuous batching."""

import os
import threading

import pytest
import torch

from scoreflow.engine import Engine, SamplingParams
from scoreflow.engine.sampling import filtered_probs, sample
from scoreflow.testing.texts import DEFAULT_MODEL_PROMPTS, as_ids


@pytest.fixture(scope="module")
def engine(default_model, default_tokenizer):
    return Engine(default_model, default_tokenizer, max_batch=8, max_seq_len=512)


@pytest.fixture(scope="module")
def prompt_ids(default_tokenizer):
    return [as_ids(default_tokenizer, p) for p in DEFAULT_MODEL_PROMPTS]


NEW_TOKENS = 32  # greedy tokens compared with transformers per prompt


@pytest.fixture(scope="module")
def hf_greedy(hf_gguf_oracle, prompt_ids):
    model, _ = hf_gguf_oracle
    outs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False,
                               eos_token_id=None, pad_token_id=0, min_new_tokens=NEW_TOKENS)
            outs.append(y[0, len(ids):].tolist())
    return outs


NO_EOS = dict(max_tokens=NEW_TOKENS, ignore_eos=True)  # HF ran without EOS: compare every token


@pytest.mark.slow
def test_greedy_matches_transformers_batched_and_alone(engine, prompt_ids, hf_greedy):
    """All five prompts of mixed lengths in one batch, and each alone, equal HF greedy."""
    batched = engine.generate(prompt_ids, SamplingParams(**NO_EOS))
    alone = [engine.generate([ids], SamplingParams(**NO_EOS))[0] for ids in prompt_ids[:2]]
    assert [c.token_ids for c in batched] == hf_greedy
    assert [c.token_ids for c in alone] == hf_greedy[:2]
    assert all(c.finish_reason == "length" and len(c.token_ids) == NEW_TOKENS for c in batched)


@pytest.mark.slow
def test_seeded_sampling_independent_of_batch(engine, prompt_ids):
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=24, seed=1234)
    alone = engine.generate([prompt_ids[0]], p)[0].token_ids
    again = engine.generate([prompt_ids[0]], p)[0].token_ids
    mixed = engine.generate([prompt_ids[2], prompt_ids[0], prompt_ids[1]], p)[1].token_ids
    other_seed = engine.generate([prompt_ids[0]], SamplingParams(**{**p.__dict__, "seed": 99}))[0].token_ids
    assert alone == again == mixed
    assert other_seed != alone


@pytest.mark.slow
def test_prefix_sharing_forks_the_cache(engine, prompt_ids):
    """n greedy samples share one prefill; each must equal the single greedy completion, and
    n sampled ones must differ from each other."""
    single = engine.generate([prompt_ids[4]], SamplingParams(max_tokens=20))[0]
    forked = engine.generate([prompt_ids[4]], SamplingParams(n=3, max_tokens=20))
    assert [c.token_ids for c in forked] == [single.token_ids] * 3
    sampled = engine.generate([prompt_ids[4]], SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=7))
    assert len({tuple(c.token_ids) for c in sampled}) > 1


@pytest.mark.slow
def test_continuous_batching_more_requests_than_slots(default_model, default_tokenizer, prompt_ids):
    """max_batch=2 with 5 prompts (and n=2 for one): requests wait, join as rows free up, and
    every result equals the one generated alone."""
    small = Engine(default_model, default_tokenizer, max_batch=2, max_seq_len=256)
    p = SamplingParams(max_tokens=12)
    together = small.generate(prompt_ids, p)
    alone = [small.generate([ids], p)[0] for ids in prompt_ids]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


@pytest.mark.slow
def test_requests_join_a_running_batch(engine, prompt_ids):
    """A request submitted from another thread while the engine is decoding joins between
    steps and gets the same tokens as when run alone."""
    long_req = engine.submit(prompt_ids[1], SamplingParams(max_tokens=40))
    engine.step()
    engine.step()
    late = []
    threading.Thread(target=lambda: late.append(engine.submit(prompt_ids[3], SamplingParams(max_tokens=10)))).start()
    while not (long_req.done.is_set() and late and late[0].done.is_set()):
        engine.step()
    assert late[0].completions()[0].token_ids == engine.generate([prompt_ids[3]], SamplingParams(max_tokens=10))[0].token_ids


@pytest.mark.slow
def test_stop_strings_and_eos(engine, default_tokenizer, prompt_ids):
    full = engine.generate([prompt_ids[1]], SamplingParams(max_tokens=40))[0]
    assert full.finish_reason in ("stop", "length")
    text = full.text
    stop = text[10:14]  # a 4-character stop string, likely spanning a token boundary
    cut = engine.generate([prompt_ids[1]], SamplingParams(max_tokens=40, stop=[stop, "@@never@@"]))[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.find(stop)]
    chat = engine.generate([prompt_ids[0]], SamplingParams(max_tokens=100))[0]
    assert chat.finish_reason == "stop" and "<|im_end|>" not in chat.text  # EOS ends, not printed


def test_logprobs_are_normalised(engine, prompt_ids):
    c = engine.generate([prompt_ids[0]], SamplingParams(max_tokens=4, logprobs=3))[0]
    assert len(c.logprobs) == len(c.token_ids)
    for lp, tok in zip(c.logprobs, c.token_ids):
        assert lp.token_id == tok and lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][1] >= lp.logprob - 1e-6  # greedy picks the top token
        assert abs(lp.top[0][1] - max(v for _, v in lp.top)) < 1e-6


# -- pure sampling statistics ----------------------------------------------------------------

@pytest.mark.parametrize("top_p,top_k,temperature", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 0.7), (0.8, 4, 1.3)])
def test_sampling_matches_filtered_softmax(top_p, top_k, temperature):
    """Empirical frequencies over many seeds vs the exact filtered, renormalised softmax."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])
    n = 20000
    p = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    tokens = sample(logits.expand(n, -1).clone(), [p] * n, list(range(n)), [0] * n)
    freq = torch.bincount(tokens, minlength=8).double() / n
    # exact reference in float64
    probs = (logits[0].double() / temperature).softmax(-1)
    order = probs.argsort(descending=True)
    keep = torch.zeros(8, dtype=torch.bool)
    mass = 0.0
    for rank, i in enumerate(order.tolist()):
        if (top_k and rank >= top_k) or mass >= top_p:
            break
        keep[i], mass = True, mass + probs[i].item()
    want = torch.where(keep, probs, torch.zeros_like(probs))
    want /= want.sum()
    assert (freq[~keep] == 0).all()
    sigma = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 5 * sigma + 1e-12).all(), (freq, want)


def test_filtered_probs_keeps_at_least_one_token():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    probs, ids = filtered_probs(logits, torch.tensor([1.0]), torch.tensor([1e-9]), torch.tensor([0]))
    assert ids[0, 0] == 0 and probs[0, 0] > 0 and (probs[0, 1:] == 0).all()


def test_candidate_ranking_equals_a_full_sort_row_by_row():
    """Ranking only the top candidates gives the filtered distribution of a full sort: peaked
    rows stay narrow, flat ones (and top_p = 1) fall back to the full sort, and a row's result
    does not depend on the rows beside it."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 500, generator=g) * torch.tensor([8.0, 8.0, 0.3, 8.0, 0.3, 8.0])[:, None]
    t = torch.tensor([0.7, 1.0, 1.0, 0.5, 1.0, 1.0])
    top_p = torch.tensor([0.95, 0.9, 0.95, 1.0, 0.5, 0.8])
    top_k = torch.tensor([0, 0, 0, 0, 20, 300])

    def dense(probs, ids):  # token-indexed filtered probabilities, (B, V)
        return torch.zeros(probs.shape[0], 500).scatter_add_(1, ids, probs)

    full = dense(*filtered_probs(logits, t, top_p, top_k, candidates=500))
    part = dense(*filtered_probs(logits, t, top_p, top_k, candidates=32))
    torch.testing.assert_close(part, full, rtol=0, atol=1e-7)
    alone = dense(*filtered_probs(logits[:1], t[:1], top_p[:1], top_k[:1], candidates=32))
    assert filtered_probs(logits[:1], t[:1], top_p[:1], top_k[:1], candidates=32)[0].shape[1] == 32  # narrow
    assert torch.equal(alone[0], part[0])


def test_greedy_rows_ignore_seeds():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    tokens = sample(logits, [SamplingParams()] * 4, [1, 2, 3, 4], [0, 5, 9, 1])
    assert torch.equal(tokens, logits.argmax(-1))


def test_bad_params_rejected(engine):
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="exceeds the engine's max_seq_len"):
        engine.generate([[1] * 500], SamplingParams(max_tokens=100))
    with pytest.raises(ValueError, match="exceeds the engine's max_batch"):
        engine.generate([[1, 2]], SamplingParams(n=100))


@pytest.mark.slow
def test_worker_survives_a_failing_step(default_model, default_tokenizer, prompt_ids, monkeypatch, capsys):
    """A step that raises ends the in-flight requests with finish_reason "error" and the
    background worker keeps serving the next ones."""
    eng = Engine(default_model, default_tokenizer, max_batch=2, max_seq_len=256)
    real, calls = eng._decode, []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        real()

    monkeypatch.setattr(eng, "_decode", flaky)
    eng.start()
    try:
        failed = eng.generate([prompt_ids[0]], SamplingParams(max_tokens=5))[0]
        assert failed.finish_reason == "error" and "injected failure" in eng.error
        ok = eng.generate([prompt_ids[0]], SamplingParams(max_tokens=5))[0]
        assert ok.finish_reason == "length" and len(ok.token_ids) == 5
    finally:
        eng.stop()  # join the worker: a thread left running is still there in later tests (test_server_signals)


def test_incremental_detokenization_equals_full_decode(default_tokenizer):
    """Token by token, the deltas add up to the full decode, also across multi-byte characters
    that span several byte-level tokens (no half character is ever emitted)."""
    from scoreflow.engine.engine import incremental_text

    text = "naïve café 😀 日本語 — done.\n\n  def f(x):\n\treturn x**2  # ok 🎉🎉"
    ids = default_tokenizer.encode(text)
    deltas, prefix, read = [], 0, 0
    for n in range(1, len(ids) + 1):
        delta, prefix, read = incremental_text(default_tokenizer, ids[:n], prefix, read)
        deltas.append(delta)
    assert "".join(deltas) == default_tokenizer.decode(ids) == text
    assert "" in deltas and not any("\ufffd" in d for d in deltas)  # waited inside 😀, 日, 🎉


@pytest.mark.slow
def test_shared_prefix_decode_equals_each_prompt_alone(engine, default_tokenizer, monkeypatch):
    """Two questions behind one long system message, n=2 each: decode reads the common prompt
    once for all four rows (shared_prefix_attention) and still gives each prompt's own tokens."""
    import scoreflow.engine.attention_plans as plans

    calls = []
    real = plans.shared_prefix_attention
    monkeypatch.setattr(plans, "shared_prefix_attention", lambda *a: calls.append(a[1].shape[1]) or real(*a))
    system = "You are a careful assistant. " * 20  # far more than SHARED_PREFIX_MIN tokens
    prompts = [default_tokenizer.encode(default_tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": q}]))
        for q in ("What is 2 + 3?", "Name a large city in France.")]
    p = SamplingParams(n=2, max_tokens=16, ignore_eos=True)
    together = engine.generate(prompts, p)
    assert calls and min(calls) >= 64  # the shared path ran, over the common prefix
    calls.clear()
    alone = [engine.generate([ids], SamplingParams(max_tokens=16, ignore_eos=True))[0] for ids in prompts]
    assert not calls  # a single row never takes it
    assert [c.token_ids for c in together] == [alone[0].token_ids] * 2 + [alone[1].token_ids] * 2


@pytest.mark.slow
def test_a_shared_prompt_prefix_is_prefilled_once(default_model, default_tokenizer):
    """Three prompts behind one long system message, admitted together: the model runs their
    common prefix once, then the rest of each prompt (P + Σ rest tokens, not Σ whole prompts),
    and each slot then holds the keys/values of that prompt prefilled alone."""
    tok = default_tokenizer
    system = "Answer in one short sentence, and check the arithmetic twice. " * 8
    prompts = [tok.encode(tok.apply_chat_template([{"role": "system", "content": system},
                                                   {"role": "user", "content": q}]))
               for q in ("What is 2 + 3?", "Name a large city in France.", "Spell 'cat' backwards.")]
    P = len(os.path.commonprefix(prompts))
    assert P >= 64 and all(len(p) > P for p in prompts)
    inputs = []  # tokens per forward, in order
    hook = default_model.embed_tokens.register_forward_hook(lambda m, args, out: inputs.append(args[0].numel()))

    def admitted(batch):
        inputs.clear()
        engine = Engine(default_model, tok, max_batch=4, max_seq_len=256)
        for ids in batch:
            engine.submit(ids, SamplingParams(max_tokens=8))
        engine.step()  # admission, then one decode step
        n = len(inputs) - 1  # the admission's forwards
        kv = [(engine.cache.k[:, b, :, : len(ids)], engine.cache.v[:, b, :, : len(ids)]) for b, ids in enumerate(batch)]
        return inputs[:n], kv

    try:
        forwards, together = admitted(prompts)
        alone = [admitted([ids]) for ids in prompts]
    finally:
        hook.remove()
    assert forwards == [P, sum(len(p) - P for p in prompts)]
    for (k, v), (forwards_alone, [(k1, v1)]), ids in zip(together, alone, prompts):
        assert forwards_alone == [len(ids)]
        torch.testing.assert_close(k, k1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v, v1, rtol=1e-4, atol=1e-4)
