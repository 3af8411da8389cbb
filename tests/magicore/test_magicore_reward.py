"""MAgICoRE reward models: the local causal-LM ORM/PRM on a tiny random Llama (saved by
transformers, loaded by our loader) against a float64 transformers oracle, on the real default
model for one example, and the LLM judge's parsing against the loopback fake server."""

import asyncio
import json
import math
import shutil

import pytest
import torch

from scoreflow.executor import ExecutorClient
from scoreflow.magicore import Chain, JudgeRewardModel, LocalLMRewardModel, RewardLayout, split_steps
from scoreflow.magicore.batches import length_batches, right_padded
from scoreflow.magicore.judge_rm import NEUTRAL, parse_score, parse_step_scores
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

QUESTION = "Janet has 16 eggs and eats 3. How many are left?"
SOLUTIONS = [
    "She starts with 16 eggs.\n\nShe eats 3, so 16 - 3 = 13.\n\nThe answer is \\boxed{13}.",
    "16 - 3 = 10, so \\boxed{10}.",
    # blank-looking lines, a step of two lines, and the tag's token inside a step:
    "Start: 16.\n\n  \n\nEaten: 3 (и ещё ки).\nStill eating.\n\nLeft: 13.\n\n\n\nSo \\boxed{13}.",
]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, initializer_range=0.5)


def tiny_rm_dir(tmp_path, default_model_dir, chat: bool):
    """A random tiny Llama with the default model's tokenizer (without its chat template
    when chat=False), saved in HF format; returns (directory, the transformers model in float64)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    if not chat:
        cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=49152, **TINY)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path, hf.double()


def oracle(hf, ids, positions, good, bad):
    """P(good) / (P(good) + P(bad)) from the float64 full-vocabulary softmax at `positions`."""
    with torch.no_grad():
        p = hf(torch.tensor([ids])).logits[0, positions].double().softmax(-1)  # (n, V)
    return (p[:, good] / (p[:, good] + p[:, bad])).tolist()


def test_split_steps_on_blank_lines():
    assert split_steps("a\n\nb\n \t\nc\nd\n\n\n\ne") == ["a", "b", "c\nd", "e"]
    assert split_steps("  one step  ") == ["one step"]
    assert split_steps("") == [""]  # always at least one step


@pytest.mark.parametrize("chat", [True, False])
def test_local_prm_and_orm_match_a_float64_oracle(tmp_path, default_model_dir, chat):
    path, hf = tiny_rm_dir(tmp_path, default_model_dir, chat)
    rm = LocalLMRewardModel(path, max_batch_tokens=200)  # small: forces several padded batches
    assert rm.chat is chat
    steps = asyncio.run(rm.prm_batch(QUESTION, SOLUTIONS))
    orm = asyncio.run(rm.orm(QUESTION, SOLUTIONS))
    assert [len(s) for s in steps] == [3, 1, 4] and len(orm) == 3
    for solution, got, outcome in zip(SOLUTIONS, steps, orm):
        ids, positions = rm.prm_inputs(QUESTION, solution)
        assert len(positions) == len(split_steps(solution))
        assert all(ids[p] == rm.tag_id for p in positions)
        assert all(0.0 < s < 1.0 for s in got) and 0.0 < outcome < 1.0
        assert got == pytest.approx(oracle(hf, ids, positions, rm.good_id, rm.bad_id), abs=1e-5)
        orm_ids = rm.orm_inputs(QUESTION, solution)
        assert [outcome] == pytest.approx(oracle(hf, orm_ids, [len(orm_ids) - 1], rm.yes_id, rm.no_id), abs=1e-5)
    assert len({round(s, 6) for s in steps[0]}) > 1  # the random model separates the positions
    # one chain scored alone (no padding) gives the same scores as in the padded batch
    assert asyncio.run(rm.prm(QUESTION, SOLUTIONS[2])) == pytest.approx(steps[2], abs=1e-6)


def test_raw_layout_is_math_shepherds_text(tmp_path, default_model_dir):
    path, _ = tiny_rm_dir(tmp_path, default_model_dir, chat=False)
    rm = LocalLMRewardModel(path)
    ids, _ = rm.prm_inputs("Q?", "a\n\nb")
    assert rm.tokenizer.decode(ids) == "Q? a ки\nb ки"
    custom = LocalLMRewardModel.from_loaded(rm.model, rm.tokenizer, RewardLayout(step_tag=" ###", chat=False))
    ids, positions = custom.prm_inputs("Q?", "a ###\n\nb")  # the tag in a step is removed first
    assert custom.tokenizer.decode(ids) == "Q? a  ###\nb ###" and len(positions) == 2


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM for LocalLMRewardModel: its final hidden state at a row's j-th step tag
    is script[j] = (l_good, l_bad) and elsewhere (30, -30); its LM head maps hidden dims 0 and 1 to
    the good and bad tokens' logits. So the logits at each tag are scripted, and a score read
    anywhere else would be sigmoid(60) ~ 1."""

    def __init__(self, vocab: int, tag: int, good: int, bad: int, script: list[tuple[float, float]]):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, 2)
        self.lm_head = torch.nn.Linear(2, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.weight[good, 0] = self.lm_head.weight[bad, 1] = 1.0
        self.tag, self.script = tag, torch.tensor(script)  # (n, 2)

    def trunk(self, ids, positions, plan):
        tags = ids == self.tag  # (B, T)
        j = (tags.cumsum(-1) - 1).clamp(0, len(self.script) - 1)
        return torch.where(tags[..., None], self.script[j], torch.tensor([30.0, -30.0]))  # (B, T, 2)


def test_step_scores_on_a_scripted_model(default_tokenizer):
    """s_j = P(+) / (P(+) + P(-)) at tag j, from logits we set; a chain's score is their product."""
    script = [(2.0, -1.0), (0.0, 0.0), (-3.0, 0.5), (1.25, 2.5)]  # exact in float32: the formula to 1e-12
    tag, good, bad = (default_tokenizer.encode(text)[-1] for text in (" ки", "+", "-"))  # Math-Shepherd's
    model = ScriptedLM(default_tokenizer.vocab_size, tag, good, bad, script)
    rm = LocalLMRewardModel.from_loaded(model, default_tokenizer, RewardLayout(chat=False), max_batch_tokens=80)
    solutions = [*SOLUTIONS[:2], "a\n\nb\n\nc\n\nd"]  # the stub counts every tag token: none inside a step
    steps = asyncio.run(rm.prm_batch(QUESTION, solutions))  # 3, 1 and 4 steps, in more than one batch
    formula = [math.exp(g) / (math.exp(g) + math.exp(b)) for g, b in script]
    assert steps == [pytest.approx(formula[:n], abs=1e-12) for n in (3, 1, 4)]
    chain = Chain(solutions[2], None, 0.5, tuple(steps[2]))
    assert chain.prm_product == pytest.approx(math.prod(formula), abs=1e-12)


def test_raw_layout_scores_as_math_shepherds_reference_code(tmp_path, default_model_dir):
    """Math-Shepherd's published scoring code, run on transformers with a tokenizer that adds a
    BOS (as its Mistral tokenizer does), gives our scores: same text, same BOS, same tag positions."""
    path, hf = tiny_rm_dir(tmp_path, default_model_dir, chat=False)
    tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<|endoftext|> $A",
                                                                  special_tokens=[("<|endoftext|>", 0)])
    tok.save(str(path / "tokenizer.json"))
    # Under a sentencepiece vocabulary (Math-Shepherd's) "+ -" encodes to the tokens "+" and "-"
    # encode to alone; this byte-level one keeps the space: its bad token is " -".
    rm = LocalLMRewardModel(path, RewardLayout(good="+", bad=" -"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    good_token, bad_token, step_tag = "+", "-", "ки"  # the reference, verbatim from here on
    candidate_tokens = tokenizer.encode(f"{good_token} {bad_token}")[1:]
    step_tag_id = tokenizer.encode(f"{step_tag}")[-1]
    for solution in SOLUTIONS[:2]:
        output = "\n".join(step + " ки" for step in split_steps(solution))
        input_id = torch.tensor([tokenizer.encode(f"{QUESTION} {output}")])
        with torch.no_grad():
            logits = hf(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        step_scores = scores[input_id == step_tag_id]
        assert input_id[0, 0] == 0 and rm.prm_inputs(QUESTION, solution)[0] == input_id[0].tolist()
        assert rm.step_scores(QUESTION, [solution])[0] == pytest.approx(step_scores.tolist(), abs=1e-5)


def test_length_batches_bound_rows_times_longest():
    assert length_batches([5, 90, 7, 88], 200) == [[0, 2], [3, 1]]
    assert length_batches([300, 4], 200) == [[1], [0]]  # too long for the bound: a batch of its own
    ids, valid = right_padded([[1, 2, 3], [4]], torch.device("cpu"))
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and valid.tolist() == [[True] * 3, [True, False, False]]


def test_multi_token_verdicts_are_refused(tmp_path, default_model_dir):
    path, _ = tiny_rm_dir(tmp_path, default_model_dir, chat=True)
    rm = LocalLMRewardModel(path)
    with pytest.raises(ValueError, match="good='correct!!' is 2 tokens"):
        LocalLMRewardModel.from_loaded(rm.model, rm.tokenizer, RewardLayout(good="correct!!"))


@pytest.mark.slow
def test_default_model_scores_one_example(default_model, default_tokenizer):
    rm = LocalLMRewardModel.from_loaded(default_model, default_tokenizer)
    (steps,) = rm.step_scores(QUESTION, SOLUTIONS[:1])
    (outcome,) = rm.outcome_scores(QUESTION, SOLUTIONS[:1])
    assert len(steps) == 3 and all(0.0 < s < 1.0 for s in steps) and 0.0 < outcome < 1.0
    ids, positions = rm.prm_inputs(QUESTION, SOLUTIONS[0])
    with torch.no_grad():
        logits = default_model(torch.tensor([ids]))[0, positions].double()  # (3, V)
    p = logits.softmax(-1)
    assert steps == pytest.approx((p[:, rm.good_id] / (p[:, rm.good_id] + p[:, rm.bad_id])).tolist(), abs=1e-5)


def test_parse_score():
    assert parse_score("Checks out.\nScore: 8") == 0.8
    assert parse_score("Score: 3/10 ... on reflection, Score: **7**") == 0.7
    assert parse_score("I would give it 6 out of 10.") == 0.6
    assert parse_score(" 9. ") == 0.9
    assert parse_score("Score: 11") is None and parse_score("looks fine") is None


def test_parse_step_scores():
    reply = "Step 1: 9\nStep 2 - 4\nstep 3: score: 10\nStep 9: 5\nStep 2: 3"
    assert parse_step_scores(reply, 4) == [0.9, 0.3, 1.0, None]


class JudgeServer(FakeOpenAIServer):
    """Replies by content: an ORM prompt about "good" gets Score 9, otherwise an unreadable
    reply; a PRM prompt gets scores for steps 1 and 2 only."""

    def _default_reply(self, path, body):
        prompt = body["messages"][-1]["content"]
        if "numbered steps" in prompt:
            return Reply(body=completion("Step 1: 10\nStep 2: 2"))
        return Reply(body=completion("Score: 9" if "good" in prompt else "no idea"))


def test_judge_scores_and_counts_unreadable_replies():
    async def main(server):
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            judge = JudgeRewardModel(executor)
            orm = await judge.orm("Q", ["a good one", "another"])
            prm = await judge.prm("Q", "x\n\ny\n\nz")
            return judge, orm, prm

    with JudgeServer() as server:
        judge, orm, prm = asyncio.run(main(server))
        bodies = [r.body for r in server.requests]
    assert orm == [0.9, NEUTRAL] and prm == [1.0, 0.2, NEUTRAL]
    assert (judge.calls, judge.unparsed) == (3, 2)
    assert all(b["temperature"] == 0.0 for b in bodies)
    prm_prompt = next(p for p in (b["messages"][-1]["content"] for b in bodies) if "numbered" in p)
    assert "Step 3: z" in prm_prompt and "Step 3: <0-10>" in prm_prompt
