"""Value-head reward models: tiny random Llama and Qwen2 *ForSequenceClassification checkpoints,
saved by transformers and loaded on our trunk, against transformers' own scores (float64 oracle);
the loader's hard failures; the ORM wrapper's inputs and sigmoid; `--orm PATH` picking it up."""

import asyncio
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from scoreflow.llama.sequence_classification import (ClassifierConfig, is_sequence_classifier, load_classifier,
                                                      reading_positions)
from scoreflow.magicore import LocalLMRewardModel, ValueHeadRewardModel
from scoreflow.magicore.__main__ import reward_models

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, rms_norm_eps=1e-5, initializer_range=0.5)
VOCAB, PAD = 49152, 0  # the default model's tokenizer; 0 is its <|endoftext|>, the pad of Qwen2 reward models
FAMILIES = {"llama": (transformers.LlamaConfig, transformers.LlamaForSequenceClassification, {}),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForSequenceClassification,
                      {"tie_word_embeddings": True})}  # q/k/v bias, and a tied config (no lm_head either way)
QUESTION = "Janet has 16 eggs and eats 3. How many are left?"
SOLUTIONS = ["16 - 3 = 13.\n\nThe answer is \\boxed{13}.", "\\boxed{10}",
             "She starts with 16 eggs, eats 3 of them at breakfast, and so has 16 - 3 = 13 left: \\boxed{13}."]


def save_classifier(path, family: str, num_labels: int = 1, pad_token_id: int | None = PAD, tokenizer_from=None):
    """A random tiny classifier saved by transformers in `path` (with the default model's tokenizer
    files when `tokenizer_from` is given); returns transformers' model in float64."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=VOCAB, num_labels=num_labels, pad_token_id=pad_token_id, **TINY, **extra)
    hf = model_cls(cfg).eval()
    with torch.no_grad():  # a visible head: transformers' default init draws it small
        hf.score.weight.normal_(0, 1.0)
    hf.save_pretrained(path, safe_serialization=True)
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_from / name, path / name)
    return hf.double()


def hf_logits(hf, sequences: list[list[int]]) -> torch.Tensor:
    """transformers' pooled logits (B, L), the rows right-padded with the pad id as it expects."""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        return hf(ids, attention_mask=mask).logits


# lengths 1, 5, 12, 40; the second ends on the pad id, which transformers reads past (at its 4th token)
SEQUENCES = [[17], [5, 900, 33, 1200, PAD], list(range(100, 112)), [(7 * i) % 4000 + 3 for i in range(40)]]


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_matches_transformers(tmp_path, family):
    hf = save_classifier(tmp_path, family)
    assert is_sequence_classifier(tmp_path)
    ours = load_classifier(tmp_path, dtype=torch.float32, device="cpu")
    assert ours.config.num_labels == 1 and ours.config.pad_token_id == PAD
    alone = torch.cat([hf_logits(hf, [s]) for s in SEQUENCES])  # (4, 1)
    assert torch.allclose(hf_logits(hf, SEQUENCES), alone, atol=1e-9)  # the oracle is padding-proof
    assert alone.abs().max() > 0.5 and alone.std() > 0.1  # scores that differ, so a wrong read shows
    with torch.no_grad():
        for s, want in zip(SEQUENCES, alone):
            assert ours(torch.tensor([s]))[0].tolist() == pytest.approx(want.tolist(), abs=1e-5)
        width = max(map(len, SEQUENCES))
        ids = torch.tensor([s + [7] * (width - len(s)) for s in SEQUENCES])  # our padding: any id, masked
        valid = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in SEQUENCES])
        assert ours(ids, valid).flatten().tolist() == pytest.approx(alone.flatten().tolist(), abs=1e-5)


def test_reading_position_is_transformers_last_non_pad_token():
    ids = torch.tensor([[4, 5, 6, 0], [4, 9, 9, 9], [9, 9, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True] * 4, [True, True, False, False]])
    assert reading_positions(ids, valid, None).tolist() == [2, 3, 1]  # the last real token
    assert reading_positions(ids, valid, 9).tolist() == [2, 0, 0]  # past trailing pad ids; none left: 0


def test_loader_fails_on_unknown_and_missing_tensors(tmp_path):
    save_classifier(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "score.bias": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not use: \['score.bias'\]"):
        load_classifier(tmp_path, device="cpu")
    save_file({k: v for k, v in weights.items() if k != "score.weight"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 1 tensors, e.g. \['score.weight'\]"):
        load_classifier(tmp_path, device="cpu")
    save_file({**weights, "score.weight": torch.zeros(2, 32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"score.weight has shape \(2, 32\)"):
        load_classifier(tmp_path, device="cpu")


def test_a_causal_lm_is_not_a_classifier(tmp_path):
    transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=64, **TINY)).save_pretrained(tmp_path)
    assert not is_sequence_classifier(tmp_path)
    with pytest.raises(ValueError, match="not a value-head model"):
        ClassifierConfig.from_json(tmp_path)


def test_head_keys_do_not_reach_the_trunk_config(recwarn):
    cfg = ClassifierConfig.from_dict({"architectures": ["LlamaForSequenceClassification"], "hidden_size": 32,
                                      "num_attention_heads": 4, "id2label": {"0": "LABEL_0"},
                                      "label2id": {"LABEL_0": 0}, "problem_type": "regression"})
    assert (cfg.num_labels, cfg.pad_token_id, cfg.trunk.hidden_size) == (1, None, 32)
    assert ClassifierConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4}).num_labels == 2  # HF's default
    assert not [w for w in recwarn if "unknown config keys" in str(w.message)]


def test_value_head_orm_is_the_sigmoid_of_transformers_score(tmp_path, default_model_dir):
    hf = save_classifier(tmp_path, "llama", tokenizer_from=default_model_dir)
    rm = ValueHeadRewardModel(tmp_path, device="cpu", max_batch_tokens=64)  # small: several batches
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sequences = []
    for solution in SOLUTIONS:  # the conversation as transformers renders it, no generation prompt
        chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": solution}]
        text = hf_tok.apply_chat_template(chat, tokenize=False)
        assert rm.inputs(QUESTION, solution) == hf_tok(text, add_special_tokens=False)["input_ids"]
        sequences.append(rm.inputs(QUESTION, solution))
    want = torch.sigmoid(torch.cat([hf_logits(hf, [s]) for s in sequences])[:, 0]).tolist()
    got = asyncio.run(rm.orm(QUESTION, SOLUTIONS))
    assert got == pytest.approx(want, abs=1e-5) and all(0.0 < o < 1.0 for o in got)
    assert max(want) - min(want) > 0.01  # the three solutions score apart


def test_a_head_of_two_labels_is_refused(tmp_path, default_model_dir):
    save_classifier(tmp_path, "llama", num_labels=2, tokenizer_from=default_model_dir)
    with pytest.raises(ValueError, match="has 2 labels"):
        ValueHeadRewardModel(tmp_path, device="cpu")


def test_orm_path_picks_the_value_head_and_prm_refuses_it(tmp_path, default_model_dir):
    value_head, causal = tmp_path / "orm", tmp_path / "prm"
    save_classifier(value_head, "llama", tokenizer_from=default_model_dir)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=VOCAB, **TINY)).save_pretrained(causal)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, causal / name)
    rms = reward_models(str(value_head), str(causal), executor=None, loaded={})
    assert isinstance(rms.orm, ValueHeadRewardModel) and type(rms.prm) is LocalLMRewardModel
    with pytest.raises(ValueError, match="value-head model .* scores whole solutions, not steps"):
        reward_models(str(causal), str(value_head), executor=None, loaded={})
