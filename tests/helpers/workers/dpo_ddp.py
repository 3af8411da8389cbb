"""torchrun worker for unit/test_dpo_trainer.py: 2-process gloo training of a tiny LoRA model. The
test puts its own folder and tests/helpers on PYTHONPATH."""

import sys

import torch
import torch.distributed as dist

from scoreflow.dpo.trainer import TrainConfig, train_dpo
from test_dpo_trainer import tiny_lora_model, tiny_pairs

dist.init_process_group("gloo")
model = tiny_lora_model(dropout=0.0)
train_dpo(model, tiny_pairs(), sys.argv[1], TrainConfig(lr=1e-2, batch_size=1, grad_accum=1), progress=False)
if dist.get_rank() == 0:
    torch.save({n: p for n, p in model.named_parameters() if p.requires_grad}, sys.argv[2])
# Tear down together: a rank that destroys its group while the other still has gloo traffic in
# flight can abort in gloo's C++ threads ("terminate called without an active exception", seen
# once in CI at stop 22).
dist.barrier()
dist.destroy_process_group()
