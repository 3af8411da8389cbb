"""The Llama decoder (also Mistral / Qwen2 / SmolLM): RMSNorm, RoPE, GQA attention, SwiGLU.

Module names follow the HF checkpoints (`layers.{i}.self_attn.q_proj`, ...) so that the loader's
name map, LoRA target names and PEFT adapter keys all read the same.

    tokens -> embed -> [x + attn(norm(x)); x + mlp(norm(x))] x L -> norm -> lm_head -> logits

Where attention reads its keys from is the caller's choice, passed to `trunk` as an attention
plan: `MaskedPlan` (this forward's own keys under a mask: training, scoring) or one of the KV
cache's plans (engine/attention_plans.py: prefill into slots, packed prefill, decode).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scoreflow.kernels.attention import attention, causal_mask
from scoreflow.kernels.linear import PackedWeight, packed_linear
from scoreflow.kernels.norm import rms_norm
from scoreflow.kernels.rope import apply_rope, inv_frequencies, rope_cos_sin

from .config import LlamaConfig


class AttentionPlan(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, T, D) and this forward's k, v (B, Hkv, T, D) -> (B, Hq, T, D)."""


class Cache(Protocol):
    """What `Transformer.forward` needs of a KV cache (engine/kv_cache.py)."""

    def num_tokens(self, batch: int) -> torch.Tensor: ...

    def plan_append(self, valid: torch.Tensor) -> AttentionPlan: ...


@dataclass(frozen=True)
class MaskedPlan:
    """No cache: each query attends to this forward's keys where mask (B, T, T) is True."""

    mask: torch.Tensor

    @classmethod
    def causal(cls, valid: torch.Tensor) -> MaskedPlan:
        """Causal over the real tokens of each row; valid (B, T) bool is False at padding."""
        return cls(causal_mask(valid, torch.arange(valid.shape[1], device=valid.device)))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, self.mask)


def real_token_positions(valid: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """RoPE positions (B, T) that count real tokens only, from `start`: left padding takes 0."""
    return (start + valid.long().cumsum(-1) - 1).clamp(min=0)


class Linear(nn.Linear):
    """nn.Linear that can also hold its weight prepacked for inference (kernels/linear.py).

    After `prepack()`, a forward under torch.inference_mode multiplies by the packed copy, made
    again first if the weight was replaced or changed in place since (loading weights, merging
    LoRA). Everything else, training and no_grad scoring included, is F.linear.
    """

    packed: PackedWeight | None = None

    def prepack(self) -> None:
        if self.packed is None or not self.packed.is_current(self.weight):
            self.packed = PackedWeight.of(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        if self.packed is not None and torch.is_inference_mode_enabled():
            self.prepack()
            if self.packed is not None:
                return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)


class SiblingProjections(nn.Module):
    """Base of Attention and MLP, whose input projections (`siblings`: q/k/v, gate/up) all read
    the same x. After `prepack()`, inference multiplies x by one packed copy of their stacked
    weights [W_1; ...; W_n] and splits the result: one call and one pass over the bytes instead
    of n. Only while each sibling is a plain `Linear`: once one is wrapped (LoRA), they run one
    by one, each on its own packed copy."""

    siblings: tuple[str, ...] = ()
    packed: PackedWeight | None = None

    def members(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.siblings]

    def prepack(self, fuse: bool = True) -> None:
        """Pack the stacked copy while every sibling is a plain `Linear` (again if a weight
        changed); otherwise, or with fuse=False, drop it and give every `Linear` among the
        siblings (a LoRA layer's base included) its own copy."""
        linears = self.members()
        if not (fuse and all(type(m) is Linear for m in linears)):
            self.packed = None
            for sub in (s for m in linears for s in m.modules() if isinstance(s, Linear)):
                sub.prepack()
        elif self.packed is None or not self.packed.is_current(*(m.weight for m in linears)):
            self.packed = PackedWeight.of(*(m.weight for m in linears))
            for m in linears:
                m.packed = None  # the stacked copy replaces their own

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (..., in) -> each sibling's output (..., out_i), in `siblings` order."""
        if self.packed is not None and torch.is_inference_mode_enabled():
            self.prepack()  # remade if a weight changed; dropped if a sibling was wrapped since
            if self.packed is not None:
                linears = self.members()
                bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
                return list(packed_linear(x, self.packed, bias).split([m.out_features for m in linears], -1))
        return [m(x) for m in self.members()]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(SiblingProjections):
    siblings = ("q_proj", "k_proj", "v_proj")

    def __init__(self, cfg: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_out_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); cos/sin (B, T, D/2) at each token's position."""
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = plan.attend(self.layer_idx, q, k, v)  # (B, Hq, T, D); a cache plan also stores k, v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(SiblingProjections):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    siblings = ("gate_proj", "up_proj")

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, plan)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.gradient_checkpointing = False  # recompute each block in backward (training memory)
        self.register_buffer("inv_freq", torch.empty(cfg.head_dim // 2), persistent=False)
        self.init_buffers()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def prepack(self, fuse: bool = True) -> None:
        """Keep a prepacked copy of every linear weight for inference (`Linear`; q/k/v and
        gate/up stacked unless fuse=False, `SiblingProjections`): on CPU in fp32 this doubles the
        weights' memory for faster batched decode (bench/RESULTS.md, "Engine decode speed");
        elsewhere it does nothing. Copies are made on torch's thread count: a copy is mostly first
        touches of new memory and of the memory-mapped weights, which more threads speed up."""
        groups = [m for m in self.modules() if isinstance(m, SiblingProjections)]
        grouped = {id(s) for g in groups for m in g.members() for s in m.modules()}
        singles = [m for m in self.modules() if isinstance(m, Linear) and id(m) not in grouped]
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            list(pool.map(lambda prepack: prepack(), [partial(g.prepack, fuse) for g in groups]
                          + [m.prepack for m in singles]))

    def unpack(self) -> None:
        """Drop every prepacked copy (training, or memory back after generation)."""
        for m in self.modules():
            if isinstance(m, (Linear, SiblingProjections)):
                m.packed = None

    @torch.no_grad()
    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the RoPE table; needed after building the model on the meta device."""
        cfg = self.config
        device = device or self.embed_tokens.weight.device
        if torch.device(device).type == "meta":
            return
        self.inv_freq = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V) in fp32, with the plan chosen from the arguments.

        attention_mask: (B, T) with 1 for real tokens and 0 for (left) padding, or an explicit
        boolean (B, T, T) mask (True = attend), not combined with a cache. positions (B, T): RoPE
        positions; by default they count real tokens only, continuing from what the cache holds.
        """
        B, T = input_ids.shape
        explicit = attention_mask is not None and attention_mask.dim() == 3
        valid = (attention_mask.bool() if attention_mask is not None and not explicit
                 else torch.ones(B, T, dtype=torch.bool, device=input_ids.device))
        if positions is None:
            positions = real_token_positions(valid, cache.num_tokens(B) if cache is not None else 0)
        if cache is not None:
            if explicit:
                raise ValueError("an explicit (B, T, T) mask cannot be combined with a KV cache")
            plan = cache.plan_append(valid)
        else:
            plan = MaskedPlan(attention_mask.bool()) if explicit else MaskedPlan.causal(valid)
        return self.lm_head(self.trunk(input_ids, positions, plan)).float()

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """Everything but the LM head: input_ids (B, T) at RoPE positions (B, T) -> final-normed
        hidden states (B, T, C), every layer attending through `plan`."""
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, plan, use_reentrant=False)
            else:
                x = layer(x, cos, sin, plan)
        return self.norm(x)
