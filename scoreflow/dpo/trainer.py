"""Score-DPO fine-tuning of the generator's LoRA (PAPERS.md §S4 step 5, §S5).

    for each optimizer step (batch_size x grad_accum x world_size units):
        logπθ(y|x) of the units' responses    one shared-prompt packed forward per micro-batch (batch.py)
        logπref                               adapter off, computed once per response, cached on disk
        L = Σ_m λ_m ℓ_m / (n λ̄)               over the step's pairs (objective.py, loss.py)
        clip, AdamW over LoRA params only, LR schedule

A unit is what one step's share is made of (`dpo_grouping`):
- "pair" (the paper's schedule; batch 1 = its SGD over the N drawn pairs): one pair, one row of
  prompt + chosen + rejected, ℓ = −log σ(f(s_w) r_w − (1 − f(s_l)) r_l);
- "question" (Score-DPO by influence, group.py): all pairs of one question, one row of prompt +
  its k distinct responses; the exact gradient of its Σλℓ is Σ_z −β I(z) ∇ logπθ(z|x); one
  optimizer step per question (or per grad_accum questions).
The one normalisation: n is the step's number of units and λ̄ the mean unit weight over the data
set (a question's weight is the sum of its pairs' λ). So pairs drawn from P* (equal λ) give the
plain mean of ℓ, exact-mode pairs (λ = P*) the same expected step, and both groupings optimise
the same Σ_m λ_m ℓ_m.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..lora import disable_adapter
from .batch import PairExample, QuestionExample, pack, response_logps
from .config import TrainConfig
from .group import group_by_question
from .objective import StepStats, pair_objective, question_objective

Unit = PairExample | QuestionExample


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _key(prompt: tuple[int, ...], response: tuple[int, ...]) -> str:
    return hashlib.sha1(json.dumps([prompt, response]).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write through a fixed temporary name, then rename: a kill mid-write leaves the old file
    whole, and at most one stale temporary that the next write replaces (the run's .lock keeps
    a second process out)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@torch.no_grad()
def reference_logps(model, units: list[Unit], cache_path: Path, batch_size: int = 1,
                    save_every: int = 16) -> dict[str, float]:
    """log πref(y|x) of every response of the units (pairs or questions), adapter disabled,
    memoised in `cache_path` (JSON), one packed row per unit."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    todo = [u for u in units if any(_key(u.prompt_ids, r) not in cache for r in u.responses)]
    todo = list({(u.prompt_ids, u.responses): u for u in todo}.values())
    device = model.embed_tokens.weight.device
    was_training = model.training
    model.eval()
    with disable_adapter(model):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            logps = response_logps(model, pack(chunk).to(device)).tolist()
            cache.update(zip((_key(u.prompt_ids, r) for u in chunk for r in u.responses), logps))
            if (i // batch_size + 1) % save_every == 0:
                _atomic_write(cache_path, lambda t: t.write_text(json.dumps(cache)))
    _atomic_write(cache_path, lambda t: t.write_text(json.dumps(cache)))
    model.train(was_training)
    return cache


def _units(pairs: list[PairExample], grouping: str) -> tuple[list[Unit], list[float]]:
    """What a micro-batch holds, and each one's weight (a question's: the sum of its pairs' λ)."""
    if grouping == "pair":
        return pairs, [p.weight for p in pairs]
    questions = group_by_question(pairs)
    return questions, [sum(q.weights) for q in questions]


def _lr_lambda(cfg: TrainConfig, total: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return max(0.0, 1 - progress) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _step_groups(n_units: int, cfg: TrainConfig, world: int) -> list[list[list[int]]]:
    """Per epoch, a seeded shuffle of unit indices cut into optimizer steps of micro-batches."""
    steps = []
    per_step = cfg.batch_size * cfg.grad_accum * world
    for epoch in range(cfg.epochs):
        order = torch.randperm(n_units, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        for s in range(0, n_units, per_step):
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
    params = _lora_params(model)
    torch.manual_seed(cfg.seed + rank)
    units, unit_weights = _units(pairs, cfg.dpo_grouping)
    ref = reference_logps(model, units, out / ("ref_logps.json" if world == 1 else f"ref_logps.rank{rank}.json"),
                          batch_size=cfg.batch_size)
    mean_weight = sum(unit_weights) / len(units)  # λ̄
    steps = _step_groups(len(units), cfg, world)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, len(steps)))
    ckpt = out / "checkpoint" / f"state.rank{rank}.pt"
    start = _resume(ckpt, params, optimizer, scheduler, cfg) if ckpt.exists() else 0
    history = _metrics_until(out / "metrics.jsonl", start, rank)
    model.train().gradient_checkpointing = cfg.gradient_checkpointing
    t_start = time.perf_counter()
    for step in range(start, len(steps)):
        t0 = time.perf_counter()
        n_step = sum(map(len, steps[step]))
        stats = StepStats()
        for mb in steps[step][rank::world]:
            stats += _micro_batch(model, [units[i] for i in mb], ref, n_step * mean_weight, cfg)
        stats = _all_reduce(params, stats) if world > 1 else stats
        grad_norm, lr = _optimizer_step(params, optimizer, scheduler, cfg)
        record = _record(step, len(steps), cfg, stats, grad_norm, lr, n_step, time.perf_counter() - t0)
        history.append(record)
        _log(out, rank, step, len(steps), cfg, record, (params, optimizer, scheduler), ckpt)
        if progress and rank == 0:
            _report(step + 1, len(steps), start, record, time.perf_counter() - t_start)
    model.eval()
    return history


def _lora_params(model) -> dict[str, torch.nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params or not all("lora_" in n for n in params):
        raise ValueError("train_dpo trains LoRA parameters only: call scoreflow.lora.apply_lora(model) "
                         f"first (trainable now: {sorted(params)[:3]})")
    return params


def _metrics_until(path: Path, step: int, rank: int) -> list[dict]:
    """The metrics logged up to `step` (a resumed run drops those logged after its checkpoint)."""
    history = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    history = [m for m in history if m["step"] <= step]
    if rank == 0:
        _atomic_write(path, lambda t: t.write_text("".join(json.dumps(m) + "\n" for m in history)))
    return history


def _micro_batch(model, batch: list[Unit], ref: dict[str, float], normaliser: float, cfg: TrainConfig) -> StepStats:
    """Forward and backward of one micro-batch: its share Σλℓ / (n λ̄) of the step's loss."""
    device = model.embed_tokens.weight.device
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        policy = response_logps(model, pack(batch).to(device))  # (R,)
    reference = torch.tensor([ref[_key(u.prompt_ids, r)] for u in batch for r in u.responses], device=device)
    objective = question_objective if cfg.dpo_grouping == "question" else pair_objective
    weighted_sum, stats = objective(batch, policy, reference, cfg.loss, cfg.beta, cfg.f)
    loss = weighted_sum / normaliser
    loss.backward()
    stats.loss, stats.tokens = loss.item(), sum(u.tokens for u in batch)
    return stats


def _optimizer_step(params: dict, optimizer, scheduler, cfg: TrainConfig) -> tuple[float, float]:
    """Clip, step and zero the LoRA gradients; (the norm before clipping, the lr that was used)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm).item()
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def _all_reduce(params: dict, stats: StepStats) -> StepStats:
    """Sum the LoRA gradients and the step's stats over the ranks."""
    for p in params.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    summed = stats.as_tensor()
    dist.all_reduce(summed)
    return StepStats.from_tensor(summed)


def _log(out: Path, rank: int, step: int, total: int, cfg: TrainConfig, record: dict, state: tuple,
         ckpt: Path) -> None:
    """Append the step's metrics line (rank 0) and checkpoint every checkpoint_every steps and at the end."""
    if rank == 0:
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
        _save_checkpoint(ckpt, *state, step + 1, cfg)


def _record(step: int, total: int, cfg: TrainConfig, stats: StepStats, grad_norm: float, lr: float,
            n_step: int, seconds: float) -> dict:
    """One metrics.jsonl line; reward margin and accuracy are means over the step's pairs
    (weighted by λ in question grouping)."""
    record = {"step": step + 1, "epoch": step * cfg.epochs // total, "loss": stats.loss,
              "reward_margin": stats.margin / stats.mass, "reward_accuracy": stats.accuracy / stats.mass,
              "theorem2_fraction": stats.inside / max(stats.responses, 1), "grad_norm": grad_norm, "lr": lr,
              "pairs": int(stats.pairs), "tokens": int(stats.tokens), "seconds": seconds}
    if cfg.dpo_grouping == "question":
        record.update(questions=n_step, responses=int(stats.responses))
    return record


def _resume(ckpt: Path, params: dict, optimizer, scheduler, cfg: TrainConfig) -> int:
    """Load a checkpoint into the LoRA weights, optimizer, scheduler and RNGs; returns its step."""
    state = torch.load(ckpt, weights_only=False)
    saved = state["config"].get("dpo_grouping", "pair")
    if saved != cfg.dpo_grouping:
        raise ValueError(f"{ckpt} was written with dpo_grouping={saved!r}, not {cfg.dpo_grouping!r}: "
                         "resume with the same grouping or use a new output directory")
    with torch.no_grad():
        for n, t in state["lora"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["step"]


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
