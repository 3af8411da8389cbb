"""`python -m scoreflow.train` under `torchrun --nproc-per-node N`: who does what.

Rank 0 runs the whole loop as one process does (the run directory, the executor, generation,
execution, scores, pairs, the adapter). Every rank trains: Score-DPO is data-parallel
(dpo/trainer.py: each rank takes every N-th micro-batch, LoRA gradients summed), so all ranks
hold the same LoRA weights after each step. The other ranks wait for an iteration's pairs on
disk (its `.pairs.done` marker) instead of in a collective, which would time out during an
hour of generation. NCCL joins the ranks when CUDA is there (each rank on its own GPU,
LOCAL_RANK), gloo otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..rundir import stage_done

POLL_S = 1.0


def start(device: str) -> tuple[int, int]:
    """(rank, world size): (0, 1) without torchrun; under it, the process group is made and a
    CUDA rank pinned to its own device. `device`: RunConfig.device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world


def is_main() -> bool:
    """Rank 0, or the only process."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def wait_for_pairs(iteration_dir: Path) -> None:
    """Block until rank 0 has written the iteration's pairs (torchrun ends every rank if it dies)."""
    if stage_done(iteration_dir, "pairs"):
        return
    print(f"rank {os.environ.get('RANK')}: waiting for rank 0's pairs in {iteration_dir}", file=sys.stderr, flush=True)
    while not stage_done(iteration_dir, "pairs"):
        time.sleep(POLL_S)


def finish(world: int) -> None:
    """All ranks leave together (a rank that tears its group down while another still has
    traffic in flight can abort in gloo's threads), then the group is destroyed."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
