"""The memory plan: the peak memory of each stage of a run, from the model's config.json alone.

No weights are loaded: every term is a count of what the code keeps alive, from the shapes in
the config (C hidden, I intermediate, L layers, Hq/Hkv heads of size D, V vocabulary) and the
run's settings, in bytes of the target's dtype (w: fp32 on CPU, bf16 on CUDA; llama/load.py).

    weights        every parameter, w each; on CPU the engine adds a prepacked copy of every
                   linear weight while it generates (Transformer.prepack)
    LoRA           params + grads in fp32, AdamW's two moments: 16 bytes per LoRA parameter
    KV cache       2 L Hkv D w per position, rows x S positions (engine/kv_cache.py)
    generation     besides, one layer of the prompt's prefill, and per decoded row the step's
                   fp32 logits, probabilities, sorted values and int64 indices: 20 V bytes
    packed pass    one row = a prompt and its responses, T tokens (dpo/batch.py). For the
                   backward each layer keeps per token
                       a = 2 (C + 1) 4 (RMSNorm inputs and scales, fp32) + 2 (C w + C 4 + r 4)
                           (per LoRA target: dropout's mask, its output in fp32, x A)
                           + (2 Hq + 2 Hkv) D w + Hq 4 (attention's q, k, v, output,
                           log-normaliser) + 3 I w (SwiGLU's gate, up, product)
                   and the float attention mask of its G = Hq / Hkv query groups, G T^2 w; its
                   boolean form, G T^2, lives while one layer runs. With checkpointing a layer
                   keeps only its input (C w per token) and one layer at a time is rebuilt.
                   Without gradients (the reference pass) only one layer's work is alive.
    LM head        log-softmax over LOGITS_BUDGET logits at a time, kept for the backward
                   (dpo/batch.py): three fp32 copies

On CPU the process adds the Python and torch runtime (runtime_cpu, measured) and counts only
with freed memory going back to the system (heap.py; without it the resident size measured up
to 4x the live tensors). On CUDA the plan is what `torch.cuda.max_memory_allocated` counts:
no CUDA context, no allocator cache. Checked against measured peaks: bench/memory_plan.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .llama.config import LlamaConfig

GiB = 2**30
# python, torch and the tokenizer, whose tables grow with the vocabulary: no weights. The two
# constants are the line through the two embedded models' measurements (bench/memory_plan.py, "runtime").
RUNTIME_CPU, RUNTIME_PER_TOKEN = int(0.23 * GiB), 800
LOGITS_BUDGET = 1 << 23  # dpo/batch.py: logit entries alive at once in the LM head
LORA_TARGETS = 2  # q_proj, v_proj


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a model (from its LlamaConfig)."""

    V: int
    C: int
    I: int
    L: int
    Hq: int
    Hkv: int
    D: int
    tied: bool
    biases: int = 0  # bias entries per layer (Qwen2's on q, k, v)

    @classmethod
    def of(cls, cfg: LlamaConfig) -> Shape:
        qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        biases = qkv * cfg.attention_bias + cfg.hidden_size * cfg.attention_out_bias
        return cls(cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                   cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings, biases)

    @property
    def G(self) -> int:
        return self.Hq // self.Hkv

    def linear_parameters(self) -> int:
        """Weights of every linear layer (the LM head included, tied or not)."""
        C, I, D = self.C, self.I, self.D
        per_layer = C * self.Hq * D * 2 + C * self.Hkv * D * 2 + 3 * C * I
        return self.L * per_layer + self.V * C

    def parameters(self) -> int:
        """Every parameter once (a tied LM head shares the embedding)."""
        norms = (2 * self.L + 1) * self.C
        return self.linear_parameters() + (0 if self.tied else self.V * self.C) + norms + self.L * self.biases

    def lora_parameters(self, r: int) -> int:
        """LoRA A and B on q_proj (C -> Hq D) and v_proj (C -> Hkv D) of every layer."""
        return self.L * r * ((self.C + self.Hq * self.D) + (self.C + self.Hkv * self.D))


@dataclass(frozen=True)
class Stage:
    name: str
    parts: dict[str, int] = field(default_factory=dict)  # what is alive at the peak -> bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def runtime_cpu(s: Shape) -> int:
    return RUNTIME_CPU + RUNTIME_PER_TOKEN * s.V


def kv_cache(s: Shape, rows: int, positions: int, w: int) -> int:
    return 2 * s.L * s.Hkv * s.D * rows * positions * w


def saved_per_token(s: Shape, r: int, w: int) -> int:
    """Bytes one token leaves in one layer for the backward (the module docstring's a)."""
    norms = 2 * (s.C + 1) * 4
    lora = LORA_TARGETS * (s.C * w + s.C * 4 + r * 4)
    attention = (2 * s.Hq + 2 * s.Hkv) * s.D * w + s.Hq * 4
    return norms + lora + attention + 3 * s.I * w


def layer_work(s: Shape, T: int, w: int) -> int:
    """One layer's forward without gradients: its projections, SwiGLU and masks for T tokens."""
    return T * ((s.Hq + 2 * s.Hkv) * s.D + 2 * s.C + 3 * s.I) * w + s.G * T * T * (1 + w)


def lm_head(s: Shape, responses_tokens: int, w: int, grad: bool) -> int:
    """The hidden states at the predicting positions and one chunk of fp32 logits with its
    log-softmax (and, in training, its gradient)."""
    return responses_tokens * s.C * w + (3 if grad else 2) * LOGITS_BUDGET * 4


def packed_pass(s: Shape, rows: int, T: int, response_tokens: int, r: int, w: int, grad: bool,
                checkpointing: bool) -> int:
    """Activations of one micro-batch of `rows` packed rows of T tokens (dpo/batch.py)."""
    mask = rows * T * T  # the packing's (B, T, T) boolean mask
    head = lm_head(s, rows * response_tokens, w, grad)
    if not grad:
        return mask + rows * layer_work(s, T, w) + head
    one_layer = rows * (T * saved_per_token(s, r, w) + s.G * T * T * (1 + w))
    if checkpointing:
        return mask + rows * s.L * T * s.C * w + one_layer + head
    return mask + s.L * rows * (T * saved_per_token(s, r, w) + s.G * T * T * w) + rows * s.G * T * T + head


@dataclass(frozen=True)
class Run:
    """The settings the plan reads (RunConfig's and TrainConfig's names)."""

    k: int
    max_new_tokens: int
    prompt_tokens: int
    lora_r: int
    grouping: str  # pair | question
    checkpointing: bool
    generate_rows: int | None  # sequences the generator decodes together; None: it runs elsewhere
    kv_round: int  # positions per row of its KV cache: a multiple of this
    batch_size: int = 1


def plan(s: Shape, run: Run, device: str = "cpu") -> list[Stage]:
    """The three stages of one iteration, each with what is alive at its peak."""
    w = 4 if device == "cpu" else 2
    base = {**({"runtime": runtime_cpu(s)} if device == "cpu" else {}), "weights": s.parameters() * w,
            "LoRA weights": s.lora_parameters(run.lora_r) * 4}
    stages = []
    if run.generate_rows is not None:
        rows = max(run.k, run.generate_rows // run.k * run.k)
        positions = math.ceil((run.prompt_tokens + run.max_new_tokens) / run.kv_round) * run.kv_round
        generation = {**base, "KV cache": kv_cache(s, rows, positions, w),
                      "prefill": layer_work(s, run.prompt_tokens, w) + rows * s.V * 20}
        if device == "cpu":
            generation["prepacked copy"] = s.linear_parameters() * w
        stages.append(Stage("generation", generation))
    responses = 2 if run.grouping == "pair" else run.k
    T = run.prompt_tokens + responses * run.max_new_tokens
    tokens = responses * run.max_new_tokens
    stages.append(Stage("reference log-probs", {**base, "pass": packed_pass(
        s, run.batch_size, T, tokens, run.lora_r, w, grad=False, checkpointing=False)}))
    stages.append(Stage("Score-DPO step", {**base, "LoRA grads, AdamW": s.lora_parameters(run.lora_r) * 12,
                                           "pass": packed_pass(s, run.batch_size, T, tokens, run.lora_r, w,
                                                               grad=True, checkpointing=run.checkpointing)}))
    return stages
