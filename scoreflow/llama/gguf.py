"""Convert a llama.cpp GGUF file into an HF-format directory our loader reads:

    OUT/config.json            from the GGUF metadata ({arch}.* keys; arch llama or qwen2)
    OUT/model.safetensors      dequantised fp32 weights, HF names (Q/K rows un-permuted for llama)
    OUT/tokenizer.json         BPE vocab + merges + pre-tokenizer rebuilt with `tokenizers`
    OUT/tokenizer_config.json  chat template and special tokens

llama.cpp's converter permutes the q_proj/k_proj rows of a `llama` model for its interleaved
(NORM) RoPE: within each head the rows (0..D/2-1 | D/2..D-1) of the HF half-split layout are
interleaved as (0, D/2, 1, D/2+1, ...). `unpermute` undoes that so our half-split `apply_rope`
sees the original rows. `qwen2` uses NEOX-style RoPE, which is the half-split layout itself, so
its rows (and its q/k/v biases) are stored as HF has them and kept as they are.

Every tensor is dequantised by the `gguf` package; a type outside `DEQUANTISED` is refused.

CLI:  python -m scoreflow.llama.gguf IN.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

_TENSOR_NAMES = {  # GGUF name template -> HF name template
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}
_QKV_BIASES = {f"blk.{{}}.attn_{p}.bias": f"model.layers.{{}}.self_attn.{p}_proj.bias" for p in "qkv"}


@dataclass(frozen=True)
class Architecture:
    """What differs between the GGUF architectures we convert."""

    model_type: str
    hf_class: str
    tensor_names: dict[str, str]
    permuted_qk: bool  # llama.cpp stored q/k rows permuted for interleaved RoPE


ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", _TENSOR_NAMES, permuted_qk=True),
    "qwen2": Architecture("qwen2", "Qwen2ForCausalLM", {**_TENSOR_NAMES, **_QKV_BIASES}, permuted_qk=False),
}

# GGML tensor types the `gguf` package dequantises and we convert (by GGMLQuantizationType name).
DEQUANTISED = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
               "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# GGUF `tokenizer.ggml.pre` -> the split regex applied before byte-level BPE (llama.cpp's table).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # llama-bpe's, but digits one by one
_PRE_TOKENIZERS = {"smollm": ("digits", _GPT2_REGEX), "gpt2": (None, _GPT2_REGEX),
                   "default": (None, _GPT2_REGEX), "llama-bpe": (None, _LLAMA3_REGEX),
                   "qwen2": (None, _QWEN2_REGEX)}

_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's rotary row permutation of a (n_heads * D, C) projection."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _architecture(meta: dict, path: Path) -> Architecture:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported "
                         f"({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch]


def _hf_names(reader, arch: Architecture, path: Path) -> dict[str, str]:
    """GGUF tensor name -> HF name for every tensor, checked before anything is dequantised:
    a tensor with no HF counterpart or of a type outside DEQUANTISED is refused."""
    out = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise ValueError(f"{path} uses llama3 rope scaling factors (rope_freqs.weight); "
                             "convert the original HF checkpoint instead")
        if t.tensor_type.name not in DEQUANTISED:
            raise ValueError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which scoreflow "
                             f"does not convert (supported: {', '.join(DEQUANTISED)})")
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        key = f"blk.{{}}.{m.group(2)}" if m else t.name
        if key not in arch.tensor_names:
            raise ValueError(f"{path}: GGUF tensor {t.name!r} has no HF counterpart known to scoreflow "
                             f"for architecture {arch.model_type}")
        out[t.name] = arch.tensor_names[key].format(m.group(1)) if m else arch.tensor_names[key]
    return out


def _metadata(reader) -> dict:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                  "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        out[name] = field.contents()
    return out


def _config(meta: dict, arch: Architecture, tied: bool, n_vocab: int) -> dict:
    def a(key: str, default=None):
        return meta.get(f"{arch.model_type}.{key}", default)

    n_heads = a("attention.head_count")
    hidden = a("embedding_length")
    return {
        "model_type": arch.model_type, "architectures": [arch.hf_class],
        "vocab_size": a("vocab_size", n_vocab), "hidden_size": hidden,
        "intermediate_size": a("feed_forward_length"), "num_hidden_layers": a("block_count"),
        "num_attention_heads": n_heads, "num_key_value_heads": a("attention.head_count_kv", n_heads),
        "head_dim": a("attention.key_length", hidden // n_heads),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": a("rope.freq_base", 10000.0),
        "max_position_embeddings": a("context_length", 4096), "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }


def _weights(reader, hf_names: dict[str, str], arch: Architecture, cfg: dict) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        # numpy shape = reversed GGUF shape = the HF (out_features, in_features) layout
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        name = hf_names[t.name]
        if arch.permuted_qk and name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif arch.permuted_qk and name.endswith("k_proj.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        out[name] = w.contiguous()
    return out


def _tokenizer(reader, meta: dict, path: Path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not "
                         "supported for GGUF conversion (byte-level BPE 'gpt2' only)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"{path}: pre-tokenizer {pre!r} unknown; known: {sorted(_PRE_TOKENIZERS)}")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    digits, regex = _PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _TOKEN_CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types)
                    if ty == _TOKEN_USER_DEFINED])
    def special(key: str) -> str | None:
        return tokens[meta[key]] if key in meta else None

    tok_cfg = {"chat_template": meta.get("tokenizer.chat_template"),
               "bos_token": special("tokenizer.ggml.bos_token_id"),
               "eos_token": special("tokenizer.ggml.eos_token_id"),
               "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    return tok, tok_cfg


def gguf_reader(path: str | Path):
    """The `gguf` package's GGUFReader, over a plain ndarray view of its memory map: the same
    bytes, still paged in lazily, but slicing no longer runs np.memmap's two Python-level methods
    per slice, ~450k times for Qwen's 151k-token vocabulary (bench/RESULTS.md, "First-use conversion")."""
    from gguf.gguf_reader import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._data

        @data.setter
        def data(self, mapped: np.memmap) -> None:
            self._data = mapped.view(np.ndarray)

    return Reader(path)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the HF-format directory for `gguf_path` to `out_dir` (atomically) and return it."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        reader = gguf_reader(gguf_path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{gguf_path} is not a readable GGUF file ({e}); pass a llama.cpp .gguf file") from None
    meta = _metadata(reader)
    arch = _architecture(meta, gguf_path)
    hf_names = _hf_names(reader, arch, gguf_path)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    cfg = _config(meta, arch, tied="output.weight" not in hf_names, n_vocab=n_vocab)
    tok, tok_cfg = _tokenizer(reader, meta, gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        save_file(_weights(reader, hf_names, arch, cfg), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scoreflow.llama.gguf",
                                description="Convert a llama.cpp GGUF file to an HF-format directory.")
    p.add_argument("gguf", help="The input .gguf file.")
    p.add_argument("out_dir", help="The output directory (config.json, model.safetensors, tokenizer.json).")
    args = p.parse_args()
    print(convert_gguf(args.gguf, args.out_dir))


if __name__ == "__main__":
    from ..cli import run_cli

    run_cli("scoreflow.llama.gguf", main)
