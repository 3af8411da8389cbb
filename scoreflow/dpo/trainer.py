"""Score-DPO fine-tuning of the generator's LoRA (SPEC A4 step 5, A5).

    for each optimizer step (batch_size x grad_accum x world_size pairs):
        logπθ(y_w|x), logπθ(y_l|x)   one shared-prompt forward per pair (batch.py)
        logπref                      adapter off, computed once per response, cached on disk
        L = Σ w'ℓ / n,  ℓ = −log σ(f(s_w) r_w − (1 − f(s_l)) r_l)        (loss.py)
        clip, AdamW over LoRA params only, LR schedule

Pair weights are rescaled to mean 1 over the data set (w' = w M / Σw), so pairs drawn from P*
(equal weights) give the plain mean and exact-mode pairs (weight P*) give the same expected step.

Everything a resumed run needs is in `out_dir`: metrics.jsonl (one line per step),
ref_logps.json, checkpoint/ (LoRA weights, optimizer, scheduler, RNG, step). Killed at any
point, `train_dpo` called again with the same arguments continues bit-identically on CPU.
Multi-process data parallel: launch with `torchrun`; each rank takes every world_size-th
micro-batch of a step and LoRA gradients are summed with all_reduce (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..cli import flag
from ..lora import disable_adapter
from .batch import PairExample, pack_pairs, pair_logps
from .loss import SCORE_MAPS, dpo_loss, reward_metrics, score_dpo_loss, theorem2_condition


@dataclass(frozen=True)
class TrainConfig:
    """Defaults = the paper's (SPEC A4: batch 1, 1 epoch, beta 0.1, lr 1e-6) and, where the paper
    is silent, the HF Trainer defaults its reference code ran under (AdamW, linear decay, clip 1)."""

    loss: str = flag("score_dpo", "Training loss: score_dpo (the paper's) or dpo (plain DPO, the ablation).",
                     choices=("score_dpo", "dpo"))
    beta: float = flag(0.1, "DPO beta: the scale of the implicit reward beta * log(pi / pi_ref).")
    f: str = flag("identity", "Score-DPO's score map f (the paper: identity).", choices=tuple(SCORE_MAPS))
    lr: float = flag(1e-6, "AdamW learning rate of the LoRA weights.")
    epochs: int = flag(1, "Passes over the drawn pairs.")
    batch_size: int = flag(1, "Pairs per micro-batch.")
    grad_accum: int = flag(1, "Micro-batches per optimizer step (per process).")
    max_grad_norm: float = flag(1.0, "Gradient clipping norm.")
    warmup_steps: int = flag(0, "Linear learning-rate warm-up steps.")
    schedule: str = "linear"  # "linear" | "cosine" | "constant" (after warmup)
    weight_decay: float = 0.0
    seed: int = 0
    gradient_checkpointing: bool = flag(False, "Recompute activations in the backward pass: less memory, "
                                               "more compute.")
    checkpoint_every: int = 50  # optimizer steps between checkpoints (and always at the end)

    def __post_init__(self):
        if self.loss not in ("score_dpo", "dpo"):
            raise ValueError(f"loss must be 'score_dpo' or 'dpo', got {self.loss!r}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        if min(self.batch_size, self.grad_accum, self.epochs, self.checkpoint_every) < 1:
            raise ValueError("batch_size, grad_accum, epochs and checkpoint_every must be >= 1")


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _key(prompt: tuple[int, ...], response: tuple[int, ...]) -> str:
    return hashlib.sha1(json.dumps([prompt, response]).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


@torch.no_grad()
def reference_logps(model, pairs: list[PairExample], cache_path: Path, batch_size: int = 1,
                    save_every: int = 16) -> dict[str, float]:
    """log πref(y|x) of every response, adapter disabled, memoised in `cache_path` (JSON)."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    todo = [p for p in pairs if _key(p.prompt_ids, p.chosen_ids) not in cache
            or _key(p.prompt_ids, p.rejected_ids) not in cache]
    todo = list({(p.prompt_ids, p.chosen_ids, p.rejected_ids): p for p in todo}.values())
    device = model.embed_tokens.weight.device
    was_training = model.training
    model.eval()
    with disable_adapter(model):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            chosen, rejected = pair_logps(model, pack_pairs(chunk).to(device))
            for p, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                cache[_key(p.prompt_ids, p.chosen_ids)] = c
                cache[_key(p.prompt_ids, p.rejected_ids)] = r
            if (i // batch_size + 1) % save_every == 0:
                _atomic_write(cache_path, lambda t: t.write_text(json.dumps(cache)))
    _atomic_write(cache_path, lambda t: t.write_text(json.dumps(cache)))
    model.train(was_training)
    return cache


def _lr_lambda(cfg: TrainConfig, total: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return max(0.0, 1 - progress) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _step_groups(n_pairs: int, cfg: TrainConfig, world: int) -> list[list[list[int]]]:
    """Per epoch, a seeded shuffle of pair indices cut into optimizer steps of micro-batches."""
    steps = []
    per_step = cfg.batch_size * cfg.grad_accum * world
    for epoch in range(cfg.epochs):
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        for s in range(0, n_pairs, per_step):
            chunk = order[s: s + per_step]
            steps.append([chunk[m: m + cfg.batch_size] for m in range(0, len(chunk), cfg.batch_size)])
    return steps


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_dpo(model, pairs: list[PairExample], out_dir: str | Path, cfg: TrainConfig = TrainConfig(),
              progress: bool = True) -> list[dict]:
    """Train the model's LoRA parameters on `pairs`; returns the metrics of every step (this run
    and the resumed part). The model must already carry LoRA layers (scoreflow.lora.apply_lora)."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = _world()
    device = model.embed_tokens.weight.device
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params or not all("lora_" in n for n in params):
        raise ValueError("train_dpo trains LoRA parameters only: call scoreflow.lora.apply_lora(model) "
                         f"first (trainable now: {sorted(params)[:3]})")
    torch.manual_seed(cfg.seed + rank)
    ref = reference_logps(model, pairs, out / ("ref_logps.json" if world == 1 else f"ref_logps.rank{rank}.json"),
                          batch_size=cfg.batch_size)
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float64)
    weights = weights * len(pairs) / weights.sum()  # w' with mean 1
    steps = _step_groups(len(pairs), cfg, world)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, len(steps)))
    ckpt = out / "checkpoint" / f"state.rank{rank}.pt"
    metrics_path = out / "metrics.jsonl"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            for n, t in state["lora"].items():
                params[n].copy_(t)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start = state["step"]
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    history = [m for m in history if m["step"] <= start]  # drop steps logged after the checkpoint
    if rank == 0:
        _atomic_write(metrics_path, lambda t: t.write_text("".join(json.dumps(m) + "\n" for m in history)))
    model.train()
    model.gradient_checkpointing = cfg.gradient_checkpointing
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    t_start = time.perf_counter()
    for step in range(start, len(steps)):
        t0 = time.perf_counter()
        micro = steps[step]
        n_step = sum(map(len, micro))
        stats = torch.zeros(6, dtype=torch.float64)  # loss, margin, acc, in-condition, responses, tokens
        for mb in micro[rank::world]:
            batch = [pairs[i] for i in mb]
            with autocast:
                pol_w, pol_l = pair_logps(model, pack_pairs(batch).to(device))
            ref_w = torch.tensor([ref[_key(p.prompt_ids, p.chosen_ids)] for p in batch], device=device)
            ref_l = torch.tensor([ref[_key(p.prompt_ids, p.rejected_ids)] for p in batch], device=device)
            w = weights[mb].to(device=device, dtype=torch.float32)
            s_w = torch.tensor([p.s_w for p in batch], device=device)
            s_l = torch.tensor([p.s_l for p in batch], device=device)
            if cfg.loss == "score_dpo":
                loss = score_dpo_loss(pol_w, pol_l, ref_w, ref_l, s_w, s_l, cfg.beta, cfg.f, weights=w)
            else:
                loss = dpo_loss(pol_w, pol_l, ref_w, ref_l, cfg.beta, weights=w)
            loss = loss * w.sum() / n_step  # this micro-batch's share of Σ w'ℓ / n
            loss.backward()
            m = reward_metrics(pol_w, pol_l, ref_w, ref_l, cfg.beta)
            r_w = (cfg.beta * (pol_w - ref_w)).detach()
            r_l = (cfg.beta * (pol_l - ref_l)).detach()
            inside = torch.cat([theorem2_condition(r_w, s_w, cfg.f), theorem2_condition(r_l, s_l, cfg.f)])
            stats += torch.tensor([loss.item(), m["reward_margin"].sum().item(),
                                   m["reward_accuracy"].sum().item(), inside.sum().item(), inside.numel(),
                                   sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                                       for p in batch)], dtype=torch.float64)
        if world > 1:
            for p in params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            dist.all_reduce(stats)
        grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm).item()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "epoch": step * cfg.epochs // len(steps), "loss": stats[0].item(),
                  "reward_margin": stats[1].item() / n_step, "reward_accuracy": stats[2].item() / n_step,
                  "theorem2_fraction": stats[3].item() / max(stats[4].item(), 1), "grad_norm": grad_norm,
                  "lr": lr, "pairs": n_step, "tokens": int(stats[5].item()),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if rank == 0:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == len(steps):
            _save_checkpoint(ckpt, params, optimizer, scheduler, step + 1, cfg)
        if progress and rank == 0:
            _report(step + 1, len(steps), start, record, time.perf_counter() - t_start)
    model.eval()
    return history


def _save_checkpoint(path: Path, params, optimizer, scheduler, step: int, cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "lora": {n: p.detach().clone() for n, p in params.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_state(), "config": asdict(cfg)}
    _atomic_write(path, lambda t: torch.save(state, t))


def _report(step: int, total: int, start: int, m: dict, elapsed: float) -> None:
    every = max(1, total // 50)
    if step % every and step != total:
        return
    eta = elapsed / (step - start) * (total - step)
    print(f"  dpo step {step}/{total}  loss {m['loss']:.4f}  margin {m['reward_margin']:+.4f}  "
          f"acc {m['reward_accuracy']:.2f}  thm2 {m['theorem2_fraction']:.2f}  "
          f"{m['seconds']:.1f}s/step  ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)
