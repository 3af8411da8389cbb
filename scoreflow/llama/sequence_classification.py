"""A value head on our trunk: HF's `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification`
(also Mistral's), the format most released outcome reward models ship in.

    tokens (B, T) -> trunk (model.py, without its LM head) -> h (B, T, C)
    logits (B, L) = h[b, r_b] @ W_score^T          W_score: `score.weight` (L, C), no bias

r_b is the row's reading position, chosen as transformers chooses it: the rightmost token that is
not `pad_token_id` (the last token when the config has none), here among the row's real tokens.
A checkpoint holds the trunk under HF's causal-LM names (`model.*`, no `lm_head`) and the head as
`score.weight`; the loader maps them one to one and fails on any tensor left over or missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import LlamaConfig
from .load import load_weights, our_name, placement
from .model import Linear, MaskedPlan, Transformer, real_token_positions
from .registry import resolve_model_dir

ARCHITECTURE_SUFFIX = "ForSequenceClassification"
# config.json keys of the head, not of the trunk (LlamaConfig would warn about them)
_HEAD_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def _config_json(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{model_dir / 'config.json'} is not valid JSON: {e}") from None


def _declares_classifier(d: dict[str, Any]) -> bool:
    return any(a.endswith(ARCHITECTURE_SUFFIX) for a in d.get("architectures") or [])


def is_sequence_classifier(model_dir: Path) -> bool:
    """Whether an HF-format directory's config.json declares a *ForSequenceClassification
    architecture (a value head)."""
    return _declares_classifier(_config_json(model_dir))


@dataclass(frozen=True)
class ClassifierConfig:
    """The trunk's config, the head's width L (num_labels) and the pad token that ends a row."""

    trunk: LlamaConfig
    num_labels: int
    pad_token_id: int | None

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ClassifierConfig:
        # transformers: num_labels = len(id2label) when saved, else its default of 2
        labels = d.get("id2label")
        num_labels = len(labels) if labels else int(d.get("num_labels", 2))
        trunk = LlamaConfig.from_dict({k: v for k, v in d.items() if k not in _HEAD_KEYS}, source)
        return cls(trunk, num_labels, d.get("pad_token_id"))

    @classmethod
    def from_json(cls, model_dir: Path) -> ClassifierConfig:
        d = _config_json(model_dir)
        if not _declares_classifier(d):
            raise ValueError(f"{model_dir}: config.json architectures {d.get('architectures')} name no "
                             f"*{ARCHITECTURE_SUFFIX}; this is not a value-head model")
        return cls.from_dict(d, str(model_dir / "config.json"))


def reading_positions(input_ids: torch.Tensor, valid: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """input_ids, valid (B, T) -> (B,) the position each row is read at: the rightmost real token
    that is not pad_token_id, 0 if there is none (transformers: argmax of index * (id != pad))."""
    keep = valid if pad_token_id is None else valid & (input_ids != pad_token_id)
    index = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (index * keep).argmax(-1)


class SequenceClassifier(nn.Module):
    """`model` (our Transformer, its LM head removed) and `score`: the module names are HF's, so a
    checkpoint's names are ours with `model.` mapped as a causal LM's trunk."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.config = cfg
        self.model = Transformer(cfg.trunk)
        del self.model.lm_head  # a classifier has none, nor has its checkpoint; only `trunk` is called
        self.score = Linear(cfg.trunk.hidden_size, cfg.num_labels, bias=False)

    def forward(self, input_ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), right-padded where valid (B, T) bool is False -> logits (B, L) in the
        weights' dtype, each row's head read at `reading_positions`."""
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        hidden = self.model.trunk(input_ids, real_token_positions(valid), MaskedPlan.causal(valid))  # (B, T, C)
        read = reading_positions(input_ids, valid, self.config.pad_token_id)  # (B,)
        return self.score(hidden[torch.arange(len(read), device=read.device), read])  # (B, L)


def classifier_name(hf_name: str) -> str | None:
    """HF name -> ours: `score.weight` as is, `model.X` as `model.` + the causal LM's name of it."""
    if hf_name == "score.weight":
        return hf_name
    ours = our_name(hf_name) if hf_name.startswith("model.") else None
    return None if ours is None else f"model.{ours}"


def load_classifier(path_or_name: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> SequenceClassifier:
    """A *ForSequenceClassification checkpoint (HF-format directory) on our trunk; dtype defaults
    to fp32 on CPU and bf16 on CUDA. Fails on a tensor it does not use or one it lacks."""
    model_dir = resolve_model_dir(path_or_name)
    cfg = ClassifierConfig.from_json(model_dir)
    dtype, device = placement(dtype, device)
    with torch.device("meta"):
        model = SequenceClassifier(cfg)
    load_weights(model, model_dir, classifier_name, dict(model.named_parameters(remove_duplicate=False)),
                 dtype, device)
    model.model.init_buffers(device)
    return model.eval()
