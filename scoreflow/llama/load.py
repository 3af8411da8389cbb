"""Safetensors (single file or sharded) -> Transformer, with an explicit HF name map.

The model is built on the meta device and each checkpoint tensor is read straight into its
final buffer and assigned in place: no random init, no state-dict copy, and no memory map
whose touched pages would sit in RSS next to the copies. Peak memory is the weights plus the
largest single tensor (bench/bench_load.py).

    safetensors file = u64 header length | JSON header {name: {dtype, shape, data_offsets}} | data
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .config import LlamaConfig
from .model import Transformer
from .registry import resolve_model_dir

_NAME_MAP = {  # HF template -> ours
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.input_layernorm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.post_attention_layernorm.weight",
    **{f"model.layers.{{}}.self_attn.{p}_proj.{kind}": f"layers.{{}}.self_attn.{p}_proj.{kind}"
       for p in "qkvo" for kind in ("weight", "bias")},
    **{f"model.layers.{{}}.mlp.{p}_proj.weight": f"layers.{{}}.mlp.{p}_proj.weight"
       for p in ("gate", "up", "down")},
}
_HARMLESS = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old checkpoints saved


def our_name(hf_name: str) -> str | None:
    m = re.fullmatch(r"(model\.layers\.)(\d+)(\..+)", hf_name)
    template = f"{m.group(1)}{{}}{m.group(3)}" if m else hf_name
    ours = _NAME_MAP.get(template)
    return None if ours is None else ours.format(m.group(2)) if m else ours


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_header(file: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section) of a safetensors file."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 2 <= n <= size - 8:
            raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): "
                             f"bad header length")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    header.pop("__metadata__", None)
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): header "
                         f"describes {8 + n + end} bytes, the file has {size}")
    return header, 8 + n


def read_tensor_into(fh, entry: dict, data_start: int, out: torch.Tensor, chunk_bytes: int = 1 << 24) -> None:
    """Fill `out` (any dtype, device and memory layout) from a tensor in the file, with plain
    reads of at most `chunk_bytes` rows at a time: no memory map, no full-size temporary."""
    begin, end = entry["data_offsets"]
    dtype = _DTYPES[entry["dtype"]]
    flat = out.view(1, -1) if out.dim() < 2 else out
    rows, row_bytes = flat.shape[0], (end - begin) // max(flat.shape[0], 1)
    step = max(1, chunk_bytes // max(row_bytes, 1))
    fh.seek(data_start + begin)
    for r in range(0, rows, step):
        buf = torch.empty((min(step, rows - r), *flat.shape[1:]), dtype=dtype)
        if fh.readinto(buf.reshape(-1).view(torch.uint8).numpy()) != buf.numel() * buf.element_size():
            raise ValueError(f"{fh.name}: short read of a tensor (truncated file?)")
        flat[r: r + len(buf)].copy_(buf)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def placement(dtype: torch.dtype | None, device: torch.device | str | None) -> tuple[torch.dtype, torch.device]:
    """(dtype, device) of loaded weights: the given ones, by default fp32 on CPU and bf16 on CUDA."""
    device = torch.device(device) if device is not None else default_device()
    return dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32), device


def load_model(path_or_name, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Transformer:
    """Load a Llama-family checkpoint. dtype defaults to fp32 on CPU and bf16 on CUDA."""
    model_dir = resolve_model_dir(path_or_name)
    cfg = LlamaConfig.from_json(model_dir)
    dtype, device = placement(dtype, device)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = dict(model.named_parameters(remove_duplicate=False))
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    load_weights(model, model_dir, our_name, expected, dtype, device,
                 skip=lambda hf_name: hf_name == "lm_head.weight" and cfg.tie_word_embeddings)
    model.tie_weights()
    model.init_buffers(device)
    return model.eval()


def load_weights(model: nn.Module, model_dir: Path, name_of: Callable[[str], str | None],
                 expected: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
                 skip: Callable[[str], bool] = lambda hf_name: False) -> None:
    """Read every tensor of the checkpoint in `model_dir` into `model` (built on meta): the
    tensor named `hf_name` becomes parameter `name_of(hf_name)`, which must be one of `expected`
    (our name -> the meta parameter, for its shape). Fails on a tensor that maps to nothing
    (unless `skip(hf_name)` or a harmless buffer), on a shape mismatch, and on any expected
    parameter the checkpoint lacks."""
    expected = dict(expected)
    unexpected = []
    for file in _shard_files(model_dir):
        if not file.exists():
            raise FileNotFoundError(f"shard {file.name} listed in the index is missing from {model_dir}")
        header, data_start = read_header(file)
        with open(file, "rb") as fh:
            for hf_name, entry in header.items():
                name = name_of(hf_name)
                if name is None or name not in expected:
                    if not (_HARMLESS.match(hf_name) or skip(hf_name)):
                        unexpected.append(hf_name)
                    continue
                want, got = tuple(expected[name].shape), tuple(entry["shape"])
                if got != want:
                    raise ValueError(f"{file}: tensor {hf_name} has shape {got}, the config in "
                                     f"{model_dir} implies {want}")
                if entry["dtype"] not in _DTYPES:
                    raise ValueError(f"{file}: tensor {hf_name} has unsupported dtype {entry['dtype']}")
                tensor = _empty(got, dtype, device)
                read_tensor_into(fh, entry, data_start, tensor)
                _assign(model, name, tensor)
                expected.pop(name)
    if expected:
        raise ValueError(f"{model_dir}: checkpoint lacks {len(expected)} tensors, e.g. "
                         f"{sorted(expected)[:5]}")
    if unexpected:
        raise ValueError(f"{model_dir}: checkpoint has tensors this architecture does not use: "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The destination buffer. On CPU a 2-D weight is stored column-major (a transposed view of
    an (in, out) buffer): F.linear then runs x @ W^T as a plain, non-transposed GEMM, which MKL
    streams faster at decode batch sizes (bench/RESULTS.md, "Model load"). Shape and values are
    the same either way."""
    if device.type == "cpu" and len(shape) == 2:
        return torch.empty(shape[::-1], dtype=dtype).t()
    return torch.empty(shape, dtype=dtype, device=device)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[param_name] = nn.Parameter(tensor, requires_grad=False)
