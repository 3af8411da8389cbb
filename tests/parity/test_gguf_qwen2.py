"""The GGUF converter on tiny synthetic qwen2 files written with the `gguf` package's own writer:
every tensor type we convert, q/k/v biases and an untied head round-trip to the fp32 weights
that transformers reads from the same file, and to the source weights where `gguf` can quantise
them; the tokenizer (qwen2 pre-tokenizer, special and added tokens) gives transformers' ids; what
we do not convert is refused by name."""

import json

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import TokenType
from safetensors.torch import load_file

from scoreflow.llama import LlamaConfig, load_model, load_tokenizer
from scoreflow.llama.gguf import DEQUANTISED, convert_gguf
from scoreflow.testing.texts import corpus

transformers = pytest.importorskip("transformers")

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2  # K-quant rows hold multiples of 256 values
HEAD_DIM = HIDDEN // HEADS
TYPES = {  # every type in DEQUANTISED at least once; the rest (norms, biases) are F32
    "token_embd.weight": "Q5_0", "output.weight": "Q8_0",
    "blk.0.attn_q.weight": "Q4_K", "blk.0.attn_k.weight": "Q5_K", "blk.0.attn_v.weight": "Q6_K",
    "blk.0.attn_output.weight": "Q2_K", "blk.0.ffn_gate.weight": "Q3_K", "blk.0.ffn_up.weight": "Q4_0",
    "blk.0.ffn_down.weight": "Q4_1",
    "blk.1.attn_q.weight": "Q5_1", "blk.1.attn_k.weight": "F16", "blk.1.attn_v.weight": "BF16",
    "blk.1.attn_output.weight": "F32", "blk.1.ffn_gate.weight": "Q8_0", "blk.1.ffn_up.weight": "Q5_0",
    "blk.1.ffn_down.weight": "Q6_K",
}
QUANTISABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # by gguf.quants.quantize
# Byte offsets of the fp16 super-block scales (d, dmin) in each K-quant block (ggml-common.h):
# `gguf` cannot quantise these types, so their blocks are random codes under small scales.
K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
# max |dequantised - source| / max |source| for the types `gguf` quantises: at most one step of
# a block's grid (its max / 2^(bits-1)), reached where the value opposite the max is clipped
TOLERANCE = {"Q4": 0.13, "Q5": 0.065, "Q8": 0.008, "F16": 1e-3, "BF16": 4e-3, "F32": 0.0}
SPECIAL = [("<|endoftext|>", TokenType.CONTROL), ("<|im_start|>", TokenType.CONTROL),
           ("<|im_end|>", TokenType.CONTROL), ("<tool_call>", TokenType.USER_DEFINED),
           ("</tool_call>", TokenType.USER_DEFINED), ("[PAD0]", TokenType.UNUSED)]
TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def byte_level_bpe(texts: list[str], size: int) -> tuple[list[str], list[str]]:
    """(tokens by id, merges) of a small byte-level BPE trained on `texts`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    return sorted(model["vocab"], key=model["vocab"].get), [" ".join(m) for m in model["merges"]]


def source_weights(n_vocab: int) -> dict[str, np.ndarray]:
    """Random fp32 weights under their GGUF names, in the HF (out, in) layout that llama.cpp's
    converter writes for qwen2 (no q/k row permutation)."""
    g = np.random.default_rng(0)
    w = lambda *shape: (g.standard_normal(shape) * 0.1).astype(np.float32)  # noqa: E731
    out = {"token_embd.weight": w(n_vocab, HIDDEN), "output.weight": w(n_vocab, HIDDEN),
           "output_norm.weight": 1 + w(HIDDEN)}
    for i in range(LAYERS):
        out |= {f"blk.{i}.attn_norm.weight": 1 + w(HIDDEN), f"blk.{i}.ffn_norm.weight": 1 + w(HIDDEN),
                f"blk.{i}.attn_q.weight": w(HIDDEN, HIDDEN), f"blk.{i}.attn_q.bias": w(HIDDEN) * 5,
                f"blk.{i}.attn_k.weight": w(KV_HEADS * HEAD_DIM, HIDDEN), f"blk.{i}.attn_k.bias": w(KV_HEADS * HEAD_DIM) * 5,
                f"blk.{i}.attn_v.weight": w(KV_HEADS * HEAD_DIM, HIDDEN), f"blk.{i}.attn_v.bias": w(KV_HEADS * HEAD_DIM) * 5,
                f"blk.{i}.attn_output.weight": w(HIDDEN, HIDDEN), f"blk.{i}.ffn_gate.weight": w(FFN, HIDDEN),
                f"blk.{i}.ffn_up.weight": w(FFN, HIDDEN), f"blk.{i}.ffn_down.weight": w(HIDDEN, FFN)}
    return out


def encode(w: np.ndarray, type_name: str, seed: int) -> np.ndarray:
    """The tensor's GGUF data: `gguf`'s own quantisation where it has one, else random blocks
    (under small scales for the K-quants)."""
    if type_name in QUANTISABLE:
        return gguf.quants.quantize(w, Q[type_name])
    block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
    g = np.random.default_rng(seed)
    blocks = g.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
    for offset in K_SCALES.get(type_name, ()):
        scales = g.uniform(1e-3, 4e-3, blocks.shape[:2]).astype(np.float16)
        blocks[..., offset: offset + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(w.shape[0], -1)


def write_gguf(path, arch: str = "qwen2", types: dict[str, str] = TYPES, tied: bool = False) -> dict[str, np.ndarray]:
    """A tiny model in GGUF at `path`; returns its source fp32 weights by GGUF name."""
    tokens, merges = byte_level_bpe(corpus(), 400)
    tokens += [t for t, _ in SPECIAL]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.NORMAL] * (len(tokens) - len(SPECIAL)) + [ty for _, ty in SPECIAL])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    source = source_weights(len(tokens))
    if tied:
        del source["output.weight"]
    for i, (name, value) in enumerate(source.items()):
        type_name = types.get(name, "F32")
        w.add_tensor(name, encode(value, type_name, seed=i), raw_dtype=Q[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return source


def hf_name(gguf_name: str) -> str:
    """llama.cpp's qwen2 tensor names -> transformers' (written out independently of gguf.py)."""
    parts = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    if gguf_name in parts:
        return parts[gguf_name]
    _, i, module, kind = gguf_name.split(".")
    return f"model.layers.{i}." + {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}[module] + f".{kind}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(GGUF path, converted directory, source weights, transformers' reading of the GGUF)."""
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    source = write_gguf(folder / "tiny.gguf")
    out = convert_gguf(folder / "tiny.gguf", folder / "hf")
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="tiny.gguf",
                                                           dtype=torch.float32).eval()
    return folder / "tiny.gguf", out, source, hf


def test_config_is_qwen2_with_biases_and_untied_head(tiny):
    _, out, source, _ = tiny
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"], cfg["tie_word_embeddings"]) == ("qwen2", ["Qwen2ForCausalLM"], False)
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rope_theta"]) == (
        HIDDEN, HEADS, KV_HEADS, 1e6)
    ours = LlamaConfig.from_json(out)
    assert ours.attention_bias and not ours.attention_out_bias
    assert ours.vocab_size == len(source["token_embd.weight"]) and ours.head_dim == HEAD_DIM


def test_every_type_round_trips_to_the_same_fp32_weights(tiny):
    """Each tensor equals transformers' reading of it exactly, and its source within the
    quantisation error wherever `gguf` could quantise the source (all but the K-quants)."""
    _, out, source, hf = tiny
    ours, theirs = load_file(out / "model.safetensors"), hf.state_dict()
    assert set(ours) == {hf_name(n) for n in source} == set(theirs)
    assert set(TYPES.values()) == set(DEQUANTISED)
    for name, value in source.items():
        got = ours[hf_name(name)]
        assert torch.equal(got, theirs[hf_name(name)]), name
        type_name = TYPES.get(name, "F32")
        if type_name in QUANTISABLE:
            err = (got - torch.from_numpy(value)).abs().max() / np.abs(value).max()
            assert err <= TOLERANCE[type_name.split("_")[0]], (name, type_name, err)
    assert not torch.equal(ours["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_logits_match_transformers(tiny):
    _, out, source, hf = tiny
    ids = torch.randint(0, len(source["token_embd.weight"]), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = load_model(out, device="cpu")(ids), hf(ids).logits
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_tokenizer_matches_transformers(tiny):
    """The qwen2 split regex, control tokens as specials, user-defined ones as added tokens
    (kept by skip_special_tokens), unused ones left to BPE."""
    gguf_path, out, _, _ = tiny
    ours = load_tokenizer(out)
    theirs = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    texts = corpus() + ["<|im_start|>user\n<tool_call>x</tool_call>[PAD0]<|im_end|>", "x\r\n\ty 12345 日本 🙂"]
    mismatches = [t for t in texts if ours.encode(t) != theirs.encode(t, add_special_tokens=False)]
    assert not mismatches, mismatches[:3]
    ids = ours.encode("<|im_end|><tool_call>[PAD0]")
    assert ids[:2] == [ours.token_to_id("<|im_end|>"), ours.token_to_id("<tool_call>")] and len(ids) > 3
    assert ours.decode(ids, skip_special_tokens=True) == "<tool_call>[PAD0]"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg == {"chat_template": TEMPLATE, "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                   "add_bos_token": False}
    assert ours.eos_token_ids == (ours.token_to_id("<|im_end|>"),)


@pytest.mark.parametrize("arch, types, message", [
    ("qwen2", {**TYPES, "blk.1.ffn_up.weight": "IQ4_NL"}, "'blk.1.ffn_up.weight' has type IQ4_NL"),
    ("qwen2", {**TYPES, "output.weight": "I8"}, "'output.weight' has type I8"),
    ("llama", TYPES, "'blk.0.attn_q.bias' has no HF counterpart known to scoreflow for architecture llama"),
    ("phi3", TYPES, "GGUF architecture 'phi3' is not supported (llama, qwen2)"),
], ids=["iq4_nl", "int8", "llama-with-biases", "phi3"])
def test_what_we_do_not_convert_is_refused(tmp_path, arch, types, message):
    write_gguf(tmp_path / "m.gguf", arch=arch, types=types)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tied_head_when_output_weight_is_absent(tmp_path):
    write_gguf(tmp_path / "m.gguf", tied=True)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    assert LlamaConfig.from_json(out).tie_word_embeddings
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    model = load_model(out, device="cpu")
    assert model.lm_head.weight is model.embed_tokens.weight


def test_peft_reads_our_q_v_adapter_on_qwen2(tiny, tmp_path):
    """LoRA on q_proj/v_proj (which carry biases) saved by us, applied by PEFT to transformers'
    Qwen2: the same logits; the adapter holds LoRA factors only, no bias."""
    peft = pytest.importorskip("peft")
    from safetensors import safe_open

    from scoreflow.lora import apply_lora, save_adapter

    gguf_path, out, source, _ = tiny
    ours = apply_lora(load_model(out, device="cpu"))
    with torch.no_grad():
        for name, p in sorted(ours.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    adapter = save_adapter(ours, tmp_path / "adapter")
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert set(f.keys()) == {f"base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.weight"
                                 for i in range(LAYERS) for p in "qv" for ab in "AB"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                           dtype=torch.float32).eval()
    theirs = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    ids = torch.randint(0, len(source["token_embd.weight"]), (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids), theirs(ids).logits, rtol=1e-5, atol=1e-5)
