"""LlamaConfig: the architecture hyper-parameters, read from an HF `config.json`."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")  # same block; qwen2 has q/k/v bias

# Keys of config.json that change nothing for inference/training here (documented so that a
# key we do not know about is reported instead of silently ignored).
_IGNORED_KEYS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "initializer_range", "pad_token_id", "hidden_act", "pretraining_tp", "mlp_bias",
    "attention_dropout", "is_llama_config", "rope_interleaved", "_name_or_path",
    "max_window_layers", "use_sliding_window", "sliding_window", "layer_types",
    "transformers.js_config", "quantization_config",
}


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency scaling ("rope_type": "llama3"): long wavelengths are divided by
    `factor`, short ones kept, and the band in between interpolated smoothly."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (and on o unless attention_out_bias says no)
    attention_out_bias: bool | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Derived fields: frozen dataclass, so assign through object.__setattr__.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attention_out_bias is None:  # Llama puts the bias on all four projections
            object.__setattr__(self, "attention_out_bias", self.attention_bias)
        eos = self.eos_token_id
        object.__setattr__(self, "eos_token_id",
                           () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos))

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> LlamaConfig:
        model_type = d.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{source}: model_type {model_type!r} is not supported; scoreflow "
                             f"loads Llama-architecture models ({', '.join(SUPPORTED_MODEL_TYPES)})")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {d['hidden_act']!r} is not supported (silu only)")
        d = dict(d)
        rope = _rope_from(d, source)
        known = {f.name for f in fields(cls)} | {"rope_parameters"}
        unknown = sorted(set(d) - known - _IGNORED_KEYS)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown config keys {unknown}", stacklevel=2)
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d and d[f.name] is not None}
        kwargs.update(rope)
        if model_type == "qwen2":  # bias on q/k/v only
            kwargs.setdefault("attention_bias", True)
            kwargs.setdefault("attention_out_bias", False)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> LlamaConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"no config.json in {path.parent}: expected an HF-format "
                                    "model directory (config.json + model.safetensors)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d, source=str(path))


def _rope_from(d: dict[str, Any], source: str) -> dict[str, Any]:
    """rope_theta / rope_scaling from either the classic keys or the newer `rope_parameters`."""
    params = d.pop("rope_parameters", None) or {}
    scaling = d.pop("rope_scaling", None) or {}
    theta = params.get("rope_theta", d.pop("rope_theta", None))
    merged = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    kind = merged.get("rope_type", merged.get("type", "default"))
    out: dict[str, Any] = {} if theta is None else {"rope_theta": float(theta)}
    if kind == "default":
        return out
    if kind != "llama3":
        raise ValueError(f"{source}: rope_type {kind!r} is not supported (default or llama3)")
    try:
        out["rope_scaling"] = RopeScaling(
            factor=float(merged["factor"]), low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]))
    except KeyError as e:
        raise ValueError(f"{source}: llama3 rope scaling is missing the field {e}") from None
    return out
