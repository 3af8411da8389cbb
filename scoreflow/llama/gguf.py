"""Convert a llama.cpp GGUF file into an HF-format directory our loader reads:

    OUT/config.json            from the GGUF metadata (llama.* keys)
    OUT/model.safetensors      dequantised fp32 weights, HF names, Q/K rows un-permuted
    OUT/tokenizer.json         BPE vocab + merges + pre-tokenizer rebuilt with `tokenizers`
    OUT/tokenizer_config.json  chat template and special tokens

llama.cpp stores q_proj/k_proj rows permuted for its interleaved RoPE: within each head the
rows (0..D/2-1 | D/2..D-1) of the HF half-split layout are interleaved as (0, D/2, 1, D/2+1, ...).
`unpermute` undoes that so our half-split `apply_rope` sees the original rows.

CLI:  python -m scoreflow.llama.gguf IN.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
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

# GGUF `tokenizer.ggml.pre` -> the split regex applied before byte-level BPE (llama.cpp's table).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {"smollm": ("digits", _GPT2_REGEX), "gpt2": (None, _GPT2_REGEX),
                   "default": (None, _GPT2_REGEX), "llama-bpe": (None, _LLAMA3_REGEX)}

_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's rotary row permutation of a (n_heads * D, C) projection."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _hf_name(gguf_name: str) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    key = f"blk.{{}}.{m.group(2)}" if m else gguf_name
    if key not in _TENSOR_NAMES:
        raise ValueError(f"GGUF tensor {gguf_name!r} has no HF counterpart known to scoreflow")
    return _TENSOR_NAMES[key].format(m.group(1)) if m else _TENSOR_NAMES[key]


def _metadata(reader) -> dict:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                  "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        out[name] = field.contents()
    return out


def _config(meta: dict, tied: bool, n_vocab: int, path: Path) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
    a = lambda key, default=None: meta.get(f"llama.{key}", default)  # noqa: E731
    n_heads = a("attention.head_count")
    hidden = a("embedding_length")
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
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


def _weights(reader, cfg: dict) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise ValueError("this GGUF uses llama3 rope scaling factors (rope_freqs.weight); "
                             "convert the original HF checkpoint instead")
        # numpy shape = reversed GGUF shape = the HF (out_features, in_features) layout
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        name = _hf_name(t.name)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
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
    special = lambda key: tokens[meta[key]] if key in meta else None  # noqa: E731
    tok_cfg = {"chat_template": meta.get("tokenizer.chat_template"),
               "bos_token": special("tokenizer.ggml.bos_token_id"),
               "eos_token": special("tokenizer.ggml.eos_token_id"),
               "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    return tok, tok_cfg


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the HF-format directory for `gguf_path` to `out_dir` (atomically) and return it."""
    from gguf import GGUFReader

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        reader = GGUFReader(gguf_path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{gguf_path} is not a readable GGUF file ({e}); pass a llama.cpp .gguf file") from None
    meta = _metadata(reader)
    names = {t.name for t in reader.tensors}
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    cfg = _config(meta, tied="output.weight" not in names, n_vocab=n_vocab, path=gguf_path)
    tok, tok_cfg = _tokenizer(reader, meta, gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        save_file(_weights(reader, cfg), tmp / "model.safetensors", metadata={"format": "pt"})
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
