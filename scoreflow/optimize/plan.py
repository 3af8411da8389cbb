"""`--plan` of `python -m scoreflow.train` and `scoreflow.evaluate`: the memory plan of a run's
settings (memory_plan.py), printed before anything is loaded, and with `--memory-budget` the
largest k and max_new_tokens that fit it per Score-DPO grouping, with and without gradient
checkpointing. The generator may be a model name, an HF folder or a bare config.json."""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import replace
from pathlib import Path

from ..llama.config import LlamaConfig
from ..llama.registry import DEFAULT_GENERATOR, DEFAULT_MODEL, resolve_model_dir
from ..memory_plan import GiB, Run, Shape, Stage, kv_cache, plan, runtime_cpu
from ..tasks import load_task
from .config import GENERATE_ROWS, KV_ROUND, RunConfig
from .endpoint import EMBEDDED_BATCH, EMBEDDED_CONTEXT

MOST_K, MOST_TOKENS = 1024, 1 << 17  # how far the budget search looks


def add_plan_flags(p, budget: bool = True) -> None:
    """--plan (and --memory-budget) on an argparse parser."""
    p.add_argument("--plan", action="store_true", help="Print the memory plan of these settings (the peak of "
                   "each stage on --device, from the generator's config.json; no weights loaded) and exit.")
    if budget:
        p.add_argument("--memory-budget", metavar="SIZE", type=parse_budget, help="With --plan: also the "
                       "largest k and max_new_tokens that fit SIZE (e.g. 24GB, 80GB), per grouping, with and "
                       "without gradient checkpointing.")


def parse_budget(text: str) -> int:
    """'80GB', '80GiB', '24G' or '24' -> bytes; GB means GiB, as a GPU's '80GB' does."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(g|gb|gib)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in GB; pass e.g. 24GB or 80GB")
    return int(float(m.group(1)) * GiB)


def model_shape(model: str) -> tuple[Shape, Path]:
    """The model's shape from its config.json (a file, an HF folder or a known name) and the folder."""
    path = Path(model).expanduser()
    folder = path.parent if path.is_file() else resolve_model_dir(model)
    return Shape.of(LlamaConfig.from_json(path if path.is_file() else folder)), folder


def prompt_tokens(cfg: RunConfig, folder: Path) -> tuple[int, str]:
    """The longest generator prompt among the run's questions, counted with the generator's
    tokenizer, or the default generator's where its folder has none."""
    from ..llama import load_tokenizer
    from .generator import prompt_ids

    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()
    tokenizer = load_tokenizer(folder if has_tokenizer else DEFAULT_GENERATOR)
    task = load_task(cfg.task, cfg.split, cfg.data_dir)
    longest = max(len(prompt_ids(tokenizer, task.family, q.prompt, cfg.extra_operators))
                  for q in task.questions[: cfg.limit])
    return longest, "" if has_tokenizer else f" (counted with {DEFAULT_GENERATOR}'s tokenizer: {folder} has none)"


def stages(cfg: RunConfig, shape: Shape, prompt: int, device: str, training: bool = True) -> list[Stage]:
    """The plan's stages for these settings, each with the loopback executor added where it runs here."""
    run = Run(cfg.k, cfg.max_new_tokens, prompt, cfg.lora_r, cfg.dpo.dpo_grouping, cfg.dpo.gradient_checkpointing,
              generate_rows=GENERATE_ROWS if cfg.generator_url is None else None, kv_round=KV_ROUND,
              batch_size=cfg.dpo.batch_size)
    out = [s for s in plan(shape, run, device) if training or s.name == "generation"]  # evaluate only generates
    if cfg.executor_url is None:
        executor = {"executor on loopback": executor_bytes(cfg.executor_model or DEFAULT_MODEL, device)}
        runtime = {"runtime": runtime_cpu(shape)} if device == "cpu" else {}
        out = [replace(s, parts={**s.parts, **executor}) for s in out] or [Stage("executor", {**runtime, **executor})]
    return out


@functools.cache
def executor_bytes(model: str, device: str) -> int:
    """The loopback executor's weights (and prepacked copy on CPU) and KV cache, in this process."""
    shape, _ = model_shape(model)
    w = 4 if device == "cpu" else 2
    copies = shape.parameters() + (shape.linear_parameters() if device == "cpu" else 0)
    return copies * w + kv_cache(shape, EMBEDDED_BATCH, EMBEDDED_CONTEXT, w)


def largest(fits, low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n) (fits is monotone: true up to some n), or None."""
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def target_device(cfg: RunConfig) -> str:
    """--device, with auto resolved as load_model resolves it."""
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _most(n: int | None, bound: int) -> str:
    return "nothing fits" if n is None else f"any (up to {bound})" if n == bound else str(n)


def report(cfg: RunConfig, budget: int | None, training: bool = True) -> str:
    """The printed plan: one table of stages, and the budget's table when a budget is given."""
    device = target_device(cfg)
    shape, folder = model_shape(cfg.generator)
    prompt, note = prompt_tokens(cfg, folder)
    training_settings = (f", grouping {cfg.dpo.dpo_grouping}, gradient checkpointing "
                         f"{'on' if cfg.dpo.gradient_checkpointing else 'off'}") if training else ""
    lines = [f"memory plan: {cfg.generator} on {device} ({'fp32' if device == 'cpu' else 'bf16'}), "
             f"longest prompt {prompt} tokens{note}, k={cfg.k}, max_new_tokens={cfg.max_new_tokens}"
             f"{training_settings}", "", "| stage | peak, GB | of which |", "|---|---|---|"]
    planned = stages(cfg, shape, prompt, device, training)
    for s in planned:
        parts = ", ".join(f"{name} {b / GiB:.2f}" for name, b in s.parts.items())
        lines.append(f"| {s.name} | {s.total / GiB:.2f} | {parts} |")
    if not planned:
        lines.append("| none in this process: generation runs at --generator-url, the executor at --executor-url "
                     "| 0.00 | - |")
    if budget is not None and training:
        lines += ["", f"What fits {budget / GiB:g} GB (the largest value; the other settings as above):", "",
                  "| grouping | checkpointing | k (max_new_tokens as set) | max_new_tokens (k as set) |",
                  "|---|---|---|---|"]
        for grouping in ("pair", "question"):
            for ckpt in (False, True):
                dpo = replace(cfg.dpo, dpo_grouping=grouping, gradient_checkpointing=ckpt)

                def peak(**change) -> int:
                    c = replace(cfg, dpo=dpo, **change)
                    return max(s.total for s in stages(c, shape, prompt, device))

                k = largest(lambda n: peak(k=n) <= budget, 2, MOST_K)
                n = largest(lambda n: peak(max_new_tokens=n) <= budget, 1, MOST_TOKENS)
                lines.append(f"| {grouping} | {'on' if ckpt else 'off'} | {_most(k, MOST_K)} | "
                             f"{_most(n, MOST_TOKENS)} |")
    return "\n".join(lines)
