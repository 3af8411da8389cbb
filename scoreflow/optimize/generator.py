"""The generator G: samples k workflows per question from the generator prompt.

Two backends with one method, `sample(prompts, n, seeds) -> [[text, ...] per prompt]` (n: one
count for all prompts, or one per prompt), and `questions_per_call(k)`, how many questions the
generate stage hands `sample` at once (and writes to disk together):
- LocalGenerator: our engine in-process on base model + LoRA (the same module object that
  Score-DPO then trains, so iteration i+1 samples from the updated policy); GENERATE_ROWS
  sequences decoded together;
- RemoteGenerator: any OpenAI-compatible /v1/completions endpoint (e.g. vLLM serving the base
  model with our PEFT-layout adapter); training still happens locally. One request per
  question (n = k, the question's seed), --generator-concurrency of them in flight at once, so
  the server batches across questions; retried as the executor's requests are
  (executor/client.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from pathlib import Path

import httpx
import torch

from ..engine import Engine, SamplingParams
from ..executor import ExecutorClient
from ..llama import load_model, load_tokenizer
from ..lora import apply_lora, load_adapter
from ..workflow.prompts import generator_prompt
from .config import GENERATE_ROWS, KV_ROUND, RunConfig
from ..progress import Progress

STOP = "</graph>"
# The assistant turn starts with the opening tag (part of the prompt): the policy writes the
# workflow from the first token instead of prose around it.
RESPONSE_PREFIX = "<graph>\n"
GENERATOR_TIMEOUT_S = 600.0  # one remote request: k workflows of up to max_new_tokens each


def prompt_ids(tokenizer, family: str, question: str, extra: tuple[str, ...] = ()) -> list[int]:
    messages = generator_prompt(family, question, extra)
    return tokenizer.encode(tokenizer.apply_chat_template(messages) + RESPONSE_PREFIX)


class LocalGenerator:
    def __init__(self, cfg: RunConfig, adapter_dir: Path | None):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.generator)
        self.model = load_model(cfg.generator, device=None if cfg.device == "auto" else cfg.device)
        # LoRA factors (and so their gradients and AdamW state) in fp32 over bf16 weights on CUDA, as PEFT keeps them
        if adapter_dir is not None:  # later iterations continue the same adapter (PAPERS.md §S4.5)
            load_adapter(self.model, adapter_dir, dtype=torch.float32)
        else:
            torch.manual_seed(cfg.seed)  # the LoRA A init: a rerun or resumed run starts from the same adapter
            apply_lora(self.model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, dtype=torch.float32)
        self.model.eval()
        self._engine = None

    def prompt_ids(self, family: str, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, family, question, self.cfg.extra_operators)

    def questions_per_call(self, k: int) -> int:
        return max(1, GENERATE_ROWS // k)

    def release(self) -> None:
        """Free what only generation uses, the engine's KV cache and the prepacked weight copies
        (Transformer.prepack); the next `sample` makes them again."""
        self._engine = None
        self.model.unpack()

    def for_iteration(self, adapter_dir: Path | None) -> LocalGenerator:
        """The generator of the next iteration: this one, whose model Score-DPO trained in place."""
        return self

    def sample(self, prompts: list[list[int]], n: int | list[int], seeds: list[int]) -> list[list[str]]:
        ns = n if isinstance(n, list) else [n] * len(prompts)
        rows, longest = sum(ns), max(map(len, prompts)) + self.cfg.max_new_tokens
        if self._engine is None or rows > self._engine.cache.n_slots or longest > self._engine.max_seq_len:
            self._engine = None  # free the old cache before allocating the new one
            positions = -(-longest // KV_ROUND) * KV_ROUND
            self._engine = Engine(self.model, self.tokenizer, max_batch=rows, max_seq_len=positions)
        params = [SamplingParams(n=k, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                 max_tokens=self.cfg.max_new_tokens, stop=[STOP], seed=s) for k, s in zip(ns, seeds)]
        progress = Progress("    sampling (tokens, at most)", rows * self.cfg.max_new_tokens, every_s=30.0)
        done = iter(self._engine.generate(prompts, params, on_step=lambda t: progress.update(t - progress.done)))
        return [[_close(c.text, c.finish_reason) for c in itertools.islice(done, k)] for k in ns]


class RemoteGenerator:
    """POST /v1/completions with the chat-templated prompt text (tokenizer of cfg.generator)."""

    def __init__(self, cfg: RunConfig, adapter_dir: Path | None):
        self.cfg, self.adapter_dir = cfg, adapter_dir
        self.tokenizer = load_tokenizer(cfg.generator)
        self.served = cfg.generator_model or cfg.generator
        self._policy: LocalGenerator | None = None
        self.http = httpx.Client(base_url=cfg.generator_url.rstrip("/"), timeout=600,
                                 headers={"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {})
        if adapter_dir is not None:  # vLLM's runtime LoRA loading; other servers: serve it yourself
            digest = hashlib.sha1(str(Path(adapter_dir).resolve()).encode()).hexdigest()[:8]
            name = f"scoreflow-{adapter_dir.parent.name}-{digest}"  # two runs' iter_1 adapters: two names
            r = self.http.post("/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter_dir)})
            if r.status_code >= 400:
                raise RuntimeError(f"{cfg.generator_url} did not load the adapter {adapter_dir} ({r.status_code}: "
                                   f"{r.text[:200]}); serve base + adapter yourself and pass --generator-model")
            self.served = name

    @property
    def model(self):
        """The local base + LoRA that Score-DPO trains (loaded on first use)."""
        if self._policy is None:
            self._policy = LocalGenerator(self.cfg, self.adapter_dir)
        return self._policy.model

    def prompt_ids(self, family: str, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, family, question, self.cfg.extra_operators)

    def for_iteration(self, adapter_dir: Path | None) -> RemoteGenerator:
        """The generator of the next iteration: the endpoint asked to serve the new adapter."""
        return RemoteGenerator(self.cfg, adapter_dir)

    def questions_per_call(self, k: int) -> int:
        return self.cfg.generator_concurrency

    def release(self) -> None:
        """Nothing to free: the local policy here only trains."""

    def sample(self, prompts: list[list[int]], n: int | list[int], seeds: list[int]) -> list[list[str]]:
        """All prompts in flight at once (at most --generator-concurrency), answers in prompt order."""
        return asyncio.run(self._sample(prompts, n if isinstance(n, list) else [n] * len(prompts), seeds))

    async def _sample(self, prompts: list[list[int]], ns: list[int], seeds: list[int]) -> list[list[str]]:
        progress = Progress("    sampling (questions)", len(prompts), every_s=30.0)
        client = ExecutorClient(self.cfg.generator_url, self.served, api_key=self.cfg.api_key,
                                max_concurrency=self.cfg.generator_concurrency, timeout=GENERATOR_TIMEOUT_S)

        async def one(ids: list[int], k: int, seed: int) -> list[str]:
            r = await client.complete(self.tokenizer.decode(ids), n=k, seed=seed, temperature=self.cfg.temperature,
                                      top_p=self.cfg.top_p, max_tokens=self.cfg.max_new_tokens, stop=[STOP])
            progress.update(1)
            return [_close(text, reason) for text, reason in zip(r.texts, r.finish_reasons)]

        async with client:
            return list(await asyncio.gather(*map(one, prompts, ns, seeds)))


def _close(text: str, finish_reason: str | None) -> str:
    """The response as the policy wrote it (after RESPONSE_PREFIX): sampling stops at </graph>
    and drops it, so it is put back."""
    return text + STOP if finish_reason == "stop" and STOP not in text else text


def make_generator(cfg: RunConfig, adapter_dir: Path | None):
    return (RemoteGenerator if cfg.generator_url else LocalGenerator)(cfg, adapter_dir)
