"""The fixed-shape decode step that CUDA graphs replay (engine/cuda_graph.py), run eagerly on CPU:
the same greedy tokens as the engine's own decode step, across column buckets and as rows retire."""

from scoreflow.engine import Engine, SamplingParams


def test_fixed_shape_decode_gives_the_same_greedy_tokens(default_model, default_tokenizer):
    tok = default_tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
               for q in ("What is 12 * 7?", "Name three prime numbers and explain why each is prime.", "Hi")]
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (12, 30, 20)]  # rows retire: B = 3, 2, 1
    plain = Engine(default_model, tok, max_batch=4, max_seq_len=256, draft_tokens=0).generate(prompts, params)
    engine = Engine(default_model, tok, max_batch=4, max_seq_len=256, draft_tokens=0, cuda_graphs=True)
    engine.graphed.bucket = 16  # many column buckets within 30 tokens
    graphed = engine.generate(prompts, params)
    assert [c.token_ids for c in graphed] == [c.token_ids for c in plain]
    shapes = set(engine.graphed.inputs)
    assert {B for B, _ in shapes} == {1, 2, 3} and len({S for _, S in shapes}) >= 3
    assert all(S % 16 == 0 for _, S in shapes)
