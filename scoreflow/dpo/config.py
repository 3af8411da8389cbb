"""Score-DPO's settings: the score maps f and the trainer's TrainConfig. No torch import here, so
a command can check its flags before loading anything heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..cli import SEED, Bounds, check_settings, flag

if TYPE_CHECKING:
    from torch import Tensor

ScoreMap = Callable[["Tensor"], "Tensor"]

# Named choices for f: strictly increasing maps of [0, 1] onto [0, 1].
SCORE_MAPS: dict[str, ScoreMap] = {
    "identity": lambda s: s,  # the paper's and the reference code's f
    "sqrt": lambda s: s.sqrt(),
    "square": lambda s: s.square(),
}


@dataclass(frozen=True)
class TrainConfig:
    """Defaults = the paper's (PAPERS.md §S4: batch 1, 1 epoch, beta 0.1, lr 1e-6) and, where the paper
    is silent, the HF Trainer defaults its reference code ran under (AdamW, linear decay, clip 1)."""

    loss: str = flag("score_dpo", "Training loss: score_dpo (the paper's) or dpo (plain DPO, the ablation).",
                     choices=("score_dpo", "dpo"))
    beta: float = flag(0.1, "DPO beta: the scale of the implicit reward beta * log(pi / pi_ref).",
                       bounds=Bounds(0, 1000, low_open=True))
    f: str = flag("identity", "Score-DPO's score map f (the paper: identity).", choices=tuple(SCORE_MAPS))
    lr: float = flag(1e-6, "AdamW learning rate of the LoRA weights.", bounds=Bounds(0, 1, low_open=True))
    epochs: int = flag(1, "Passes over the drawn pairs.", bounds=(1, 1000))
    batch_size: int = flag(1, "Pairs per micro-batch (questions, in question grouping).", bounds=(1, 4096))
    grad_accum: int = flag(1, "Micro-batches per optimizer step (per process).", bounds=(1, 4096))
    max_grad_norm: float = flag(1.0, "Gradient clipping norm.", bounds=Bounds(0, 1e6, low_open=True))
    warmup_steps: int = flag(0, "Linear learning-rate warm-up steps.", bounds=(0, 10**8))
    schedule: str = "linear"  # "linear" | "cosine" | "constant" (after warmup)
    weight_decay: float = flag(0.0, bounds=(0, 1))  # no flag: the HF Trainer's default
    seed: int = flag(0, bounds=SEED)  # no flag: the order of pairs and the LoRA dropout masks
    gradient_checkpointing: bool = flag(False, "Recompute activations in the backward pass: less memory, "
                                               "more compute.")
    checkpoint_every: int = flag(50, "Optimizer steps between training checkpoints (and always at the end): a "
                                     "killed run resumes from the last one.", bounds=(1, 10**8))
    dpo_grouping: str = flag("pair", "What one micro-batch entry is: pair = one drawn pair, one pass each (the "
                                     "paper's schedule); question = all pairs of a question from one packed pass "
                                     "over its prompt and k responses, the exact weighted gradient (faster, no "
                                     "sampling noise, one step per question).", choices=("pair", "question"))

    def __post_init__(self):
        if self.loss not in ("score_dpo", "dpo"):
            raise ValueError(f"loss must be 'score_dpo' or 'dpo', got {self.loss!r}")
        if self.dpo_grouping not in ("pair", "question"):
            raise ValueError(f"dpo_grouping must be 'pair' or 'question', got {self.dpo_grouping!r}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        check_settings(self)
