"""LoRA (Hu et al., 2021) for our Transformer, stored in the PEFT adapter layout.

A frozen linear W (out, in) gets a trainable low-rank update:

    h = W x + (α / r) · B A x        A: (r, in) kaiming-uniform, B: (out, r) zeros

so a fresh adapter is exactly the base model. Only parameters whose name contains `lora_`
train. Score-DPO's reference policy π_ref is the same model under `disable_adapter` (PAPERS.md §S4).

On disk (what `peft` 0.21 writes and reads for a transformers LlamaForCausalLM):

    adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, ...}
    adapter_model.safetensors  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
                               (r, in), and ....lora_B.weight (out, r); likewise for v_proj

Module names are matched the way PEFT matches them, against the HF names
(`model.layers.0.self_attn.q_proj`; our `layers.0...` plus the `model.` prefix).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> LlamaForCausalLM
# PEFT config keys that only matter when an adapter is created (init schemes) or are bookkeeping.
_IGNORED = {"auto_mapping", "base_model_name_or_path", "corda_config", "ensure_weight_tying",
            "eva_config", "inference_mode", "init_lora_weights", "loftq_config", "lora_ga_config",
            "megatron_core", "peft_version", "qalora_group_size", "revision", "task_type"}
# PEFT options that change which weights exist or how the forward is computed: fail when set.
_UNSUPPORTED = ("alora_invocation_tokens", "alpha_pattern", "arrow_config", "exclude_modules",
                "fan_in_fan_out", "kasa_config", "layer_replication", "layers_pattern",
                "layers_to_transform", "lora_bias", "megatron_config", "modules_to_save",
                "monteclora_config", "rank_pattern", "target_parameters", "trainable_token_indices",
                "use_bdlora", "use_dora", "use_qalora", "velora_config")


@dataclass(frozen=True)
class LoRAConfig:
    """Defaults are the paper's (PAPERS.md §S4). targets: module names (PEFT list form: a name matches
    when it equals the HF module name or ends with `.name`) or one regex fullmatched against it."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.01
    targets: tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False  # rank-stabilised scaling α / sqrt(r) instead of α / r

    def __post_init__(self):
        if self.r < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA needs r >= 1 and 0 <= dropout < 1, got r={self.r}, "
                             f"dropout={self.dropout}")
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))

    def to_peft(self, base_model_name_or_path: str | None) -> dict:
        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path":
                base_model_name_or_path, "r": self.r, "lora_alpha": self.alpha,
                "lora_dropout": self.dropout, "target_modules": targets, "bias": "none",
                "use_rslora": self.use_rslora, "use_dora": False, "fan_in_fan_out": False,
                "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
                "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True,
                "inference_mode": True}

    @classmethod
    def from_peft(cls, cfg: dict, source: Path) -> LoRAConfig:
        """Read a PEFT LoraConfig dict; fail on options this implementation does not have."""
        if cfg.get("peft_type") != "LORA":
            raise ValueError(f"{source}: peft_type {cfg.get('peft_type')!r} is not supported, "
                             f"only 'LORA'")
        bad = [k for k in _UNSUPPORTED if cfg.get(k)]
        if cfg.get("bias", "none") != "none":
            bad.append("bias")
        if bad:
            raise ValueError(f"{source}: unsupported PEFT LoRA options "
                             f"{ {k: cfg[k] for k in bad} }; only plain LoRA (optionally rslora) "
                             f"on nn.Linear modules is implemented")
        known = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                 "use_rslora", *_IGNORED, *_UNSUPPORTED}
        if unknown := sorted(set(cfg) - known):
            warnings.warn(f"{source}: ignoring unknown adapter config keys {unknown}", stacklevel=3)
        if not cfg.get("target_modules"):
            raise ValueError(f"{source}: target_modules is missing or empty")
        return cls(r=cfg.get("r", 8), alpha=cfg.get("lora_alpha", 8),  # PEFT's defaults
                   dropout=cfg.get("lora_dropout", 0.0),
                   targets=cfg["target_modules"], use_rslora=bool(cfg.get("use_rslora")))


class LoRALinear(nn.Module):
    """base(x) + (α/r) · B A dropout(x), with the base linear frozen.

    The LoRA factors live in the base weight's dtype/device unless `dtype` says otherwise
    (e.g. float32 factors over a bf16 base: the branch then runs in fp32 and its output is
    cast back to the base output's dtype before the sum).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, *,
                 use_rslora: bool = False, dtype: torch.dtype | None = None):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        w = base.weight  # (out, in)
        kw = dict(device=w.device, dtype=dtype or w.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT (and nn.Linear)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        self.merged = False  # W holds W + (α/r) B A; the branch is skipped
        self.enabled = True  # False: act as the base layer (π_ref)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., out)
        if self.merged or not self.enabled:
            return out
        x = self.dropout(x).to(self.lora_A.dtype)  # (..., in)
        lora = (x @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (..., r) -> (..., out)
        return out + lora.to(out.dtype)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """(α/r) B A, (out, in), computed in fp32 (bf16 matmuls are slow on CPU) and returned
        in the base weight's dtype."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        return delta.to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (α/r) B A. Rounds once in W's dtype: unmerge restores W only to ~1 ulp of
        |W| + |ΔW| (~1e-7 relative in fp32; bf16 loses up to a bf16 ulp per element)."""
        if self.merged or not self.enabled:
            raise RuntimeError(f"cannot merge a LoRA layer that is "
                               f"{'already merged' if self.merged else 'disabled'}")
        self.base_layer.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W − (α/r) B A (see `merge` for the rounding)."""
        if not self.merged:
            raise RuntimeError("cannot unmerge a LoRA layer that is not merged")
        self.base_layer.weight.sub_(self.delta_weight())
        self.merged = False


def _hf_name(name: str) -> str:
    """Our module name -> transformers' LlamaForCausalLM one: `layers.0.x` -> `model.layers.0.x`."""
    return name if name == "lm_head" else f"model.{name}"


def _matches(targets: tuple[str, ...] | str, hf_name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, hf_name) is not None
    return any(hf_name == t or hf_name.endswith(f".{t}") for t in targets)


def _find_targets(model: nn.Module, cfg: LoRAConfig) -> dict[str, nn.Linear]:
    """Our module name -> the nn.Linear that cfg.targets selects; ValueError when none or a
    selected module cannot take LoRA."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA layers; apply LoRA once (load_adapter on a "
                         "fresh base model, or keep training the adapter it has)")
    found = {n: m for n, m in model.named_modules() if n and _matches(cfg.targets, _hf_name(n))}
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"no module matches LoRA targets {cfg.targets!r}; linear modules "
                         f"are named e.g. {linears[:8]}")
    if other := [n for n, m in found.items() if not isinstance(m, nn.Linear)]:
        raise ValueError(f"LoRA targets {cfg.targets!r} select non-nn.Linear modules {other[:5]}; "
                         f"only nn.Linear is supported")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    if tied := [n for n, m in found.items() if uses[id(m.weight)] > 1]:
        raise ValueError(f"{tied} share their weight with another module (tied embeddings); "
                         f"merging LoRA into them would change both, so they cannot be targets")
    return found


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        raise ValueError("the model has no LoRA layers; call apply_lora or load_adapter first")
    return layers


def _inject(model: nn.Module, cfg: LoRAConfig, dtype: torch.dtype | None) -> dict[str, LoRALinear]:
    layers = {}
    for name, linear in _find_targets(model, cfg).items():
        parent_name, _, child = name.rpartition(".")
        lora = LoRALinear(linear, cfg.r, cfg.alpha, cfg.dropout, use_rslora=cfg.use_rslora,
                          dtype=dtype).train(linear.training)
        setattr(model.get_submodule(parent_name), child, lora)
        layers[name] = lora
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.lora_config = cfg
    return layers


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.01,
               targets: Sequence[str] | str = ("q_proj", "v_proj"), *, use_rslora: bool = False,
               dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap the targeted nn.Linear children in LoRALinear (in place), freeze everything else,
    store the LoRAConfig as `model.lora_config`, return the model. dtype: of the LoRA factors
    (default: each base weight's dtype)."""
    _inject(model, LoRAConfig(r, alpha, dropout, targets, use_rslora), dtype)
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Every LoRALinear acts as its base layer (DPO's π_ref); each layer's previous state comes
    back on exit, also on exceptions. Refuses merged layers: W + ΔW − ΔW is only ~1 ulp from W,
    so the base output could not be exact; `unmerge_lora` first (better: don't merge while
    training, and note that unmerged weights also carry that ~1 ulp)."""
    layers = _lora_layers(model)
    if merged := [n for n, m in layers.items() if m.merged]:
        raise RuntimeError(f"disable_adapter needs unmerged LoRA layers, {merged[:3]} are merged; "
                           f"call unmerge_lora(model) first")
    before = {n: m.enabled for n, m in layers.items()}
    for m in layers.values():
        m.enabled = False
    try:
        yield model
    finally:
        for n, m in layers.items():
            m.enabled = before[n]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold (α/r) B A into every base weight (faster inference; LoRA params get no gradient)."""
    for m in _lora_layers(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for m in _lora_layers(model).values():
        m.unmerge()
    return model


def _peft_keys(name: str) -> tuple[str, str]:
    stem = f"{_PREFIX}{_hf_name(name)}"
    return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"


def save_adapter(model: nn.Module, out_dir: str | os.PathLike,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors as PEFT does. Atomic: both files go
    to a temp dir that then replaces out_dir as a whole (out_dir should hold only the adapter)."""
    layers, cfg = _lora_layers(model), model.lora_config
    tensors = {}
    for name, m in layers.items():
        key_a, key_b = _peft_keys(name)
        tensors[key_a] = m.lora_A.detach().cpu().contiguous()  # (r, in)
        tensors[key_b] = m.lora_B.detach().cpu().contiguous()  # (out, r)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".{out.name}.tmp-{os.getpid()}"), out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_peft(base_model_name_or_path), indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)  # a crash from here on leaves the previous adapter intact in `old`
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """Apply LoRA with the config in adapter_dir (ours or PEFT's) and load its weights. Every
    file key and shape is checked before the model is touched."""
    adapter_dir = Path(adapter_dir)
    cfg_file, weights_file = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {adapter_dir}; is it a PEFT adapter "
                                f"directory?")
    if not weights_file.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {adapter_dir} (pickled adapter_model.bin "
                                f"is not read; re-save the adapter with safetensors)")
    cfg = LoRAConfig.from_peft(json.loads(cfg_file.read_text()), cfg_file)
    expected = {}  # file key -> shape
    for name, linear in _find_targets(model, cfg).items():
        key_a, key_b = _peft_keys(name)
        expected[key_a], expected[key_b] = (cfg.r, linear.in_features), (linear.out_features, cfg.r)
    with safe_open(str(weights_file), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if unexpected := sorted(set(tensors) - set(expected)):
        raise ValueError(f"{weights_file}: keys the config's targets do not select in this "
                         f"model: {unexpected[:5]}")
    if missing := sorted(set(expected) - set(tensors)):
        raise ValueError(f"{weights_file}: missing keys {missing[:5]}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{weights_file}: {key} has shape {tuple(tensors[key].shape)}, this "
                             f"model with r={cfg.r} needs {shape}")
    with torch.no_grad():
        for name, m in _inject(model, cfg, dtype).items():
            key_a, key_b = _peft_keys(name)
            m.lora_A.copy_(tensors[key_a])  # (r, in)
            m.lora_B.copy_(tensors[key_b])  # (out, r)
    return model
