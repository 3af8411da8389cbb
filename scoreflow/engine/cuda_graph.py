"""A plain decode step (one new token per row) at fixed shapes, replayed as a CUDA graph.

On a GPU a decode step launches ~15 kernels per layer, and at small batches issuing them from
Python costs more than running them. A CUDA graph records the step's kernels once and replays
them with one launch. Replay needs fixed shapes and fixed addresses, so the step is reshaped:

- its inputs live in static buffers (tokens, positions, cache rows/columns, mask), filled
  before each replay;
- attention reads a fixed number of cache columns: the longest row's length rounded up to a
  multiple of `bucket` (columns past a row's length are never valid, so the mask hides them);
- one graph per (rows, columns) pair, captured the first time it is needed; all share one
  memory pool.

On CPU nothing is captured: the same fixed-shape step runs eagerly (what the CPU tests check).
Speculative verify passes and shared-prefix decode steps stay eager (engine.py).

A graph replays the kernels it recorded: weights changed in place (a LoRA optimizer step) are
seen, but Python-level switches made after the capture are not (`disable_adapter`, merging or
unmerging LoRA, train/eval mode): make a new Engine after those.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scoreflow.llama import Transformer

from .attention_plans import AppendPlan
from .kv_cache import KVCache


class GraphedDecode:
    def __init__(self, model: Transformer, cache: KVCache, bucket: int = 256):
        self.model, self.cache, self.bucket = model, cache, bucket
        self.capture = cache.k.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.inputs: dict[tuple[int, int], dict[str, torch.Tensor]] = {}  # static buffers per (B, S)
        self.replays: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1): each row's last token, appended at its own length -> logits (B, V) fp32.
        The cache's own append plan claims the columns; its tensors are copied into the buffers."""
        B, device = tokens.shape[0], tokens.device
        pos = torch.tensor(self.cache.lengths[:B], device=device)[:, None]  # (B, 1), before the claim
        plan = self.cache.plan_append(torch.ones(B, 1, dtype=torch.bool, device=device), self.bucket)
        S = plan.mask.shape[-1]
        step = {"tokens": tokens, "pos": pos, "rows": plan.rows, "cols": plan.cols, "mask": plan.mask}
        inputs = self.inputs.setdefault((B, S), {name: torch.zeros_like(value) for name, value in step.items()})
        for name, value in step.items():
            inputs[name].copy_(value)
        if (B, S) not in self.replays:  # built from filled inputs: a capture's warm-up writes this step's k/v
            self.replays[B, S] = self._replay(inputs)
        return self.replays[B, S]().clone()

    def _replay(self, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
        """A function computing the step from `inputs`: eager on CPU, a graph replay on CUDA."""
        plan = AppendPlan(self.cache.k, self.cache.v, inputs["rows"], inputs["cols"], inputs["mask"])

        def forward() -> torch.Tensor:  # (B, V)
            return self.model.lm_head(self.model.trunk(inputs["tokens"], inputs["pos"], plan)[:, 0]).float()

        if not self.capture:
            return forward
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: rewrites this step's keys/values, harmless
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay
