"""ValueHeadRewardModel: an ORM with a value head (HF *ForSequenceClassification, the format of
most released outcome reward models), run here on our trunk (llama/sequence_classification.py;
interface: reward.py). Each (question, solution) is one sequence,

    with a chat template:  the conversation [user: question, assistant: solution], no generation prompt
    without one:           "{question}\\n\\n{solution}" after the tokenizer's special tokens (its BOS)

and its score is the head's one logit z at the last non-pad token through a sigmoid,

    o = sigmoid(z) in [0, 1]

as the MAgICoRE reference reads its ORM (internlm2-7b-reward: a scalar reward through a sigmoid).
That model's own architecture (InternLM2, fused q/k/v) does not load here; Llama-, Mistral- and
Qwen2-based ones do. A value head scores whole solutions only: it is no PRM.
"""

from __future__ import annotations

import asyncio
import os
import threading

import torch

from scoreflow.llama import Tokenizer, load_tokenizer
from scoreflow.llama.sequence_classification import SequenceClassifier, load_classifier

from .batches import length_batches, right_padded
from .reward import OutcomeRewardModel


class ValueHeadRewardModel(OutcomeRewardModel):
    """The ORM of a *ForSequenceClassification checkpoint with one label (see the module docstring).

    `ValueHeadRewardModel(path)` loads an HF-format directory; `from_loaded(model, tokenizer)`
    takes one in memory. Forwards run in a worker thread, one at a time, under
    torch.inference_mode, in right-padded batches of at most `max_batch_tokens` (rows x longest row).
    """

    def __init__(self, path_or_name: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, max_batch_tokens: int = 16384):
        self._bind(load_classifier(path_or_name, dtype, device), load_tokenizer(path_or_name), max_batch_tokens)

    @classmethod
    def from_loaded(cls, model: SequenceClassifier, tokenizer: Tokenizer,
                    max_batch_tokens: int = 16384) -> "ValueHeadRewardModel":
        rm = cls.__new__(cls)
        rm._bind(model, tokenizer, max_batch_tokens)
        return rm

    def _bind(self, model: SequenceClassifier, tokenizer: Tokenizer, max_batch_tokens: int) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"this value head has {model.config.num_labels} labels; an ORM here reads one logit "
                             f"through a sigmoid, so pass a reward model saved with num_labels=1")
        self.model, self.tokenizer, self.max_batch_tokens = model.eval(), tokenizer, max_batch_tokens
        self._lock = threading.Lock()

    def inputs(self, question: str, solution: str) -> list[int]:
        """Token ids of one (question, solution) pair, as the reward model was trained to read it."""
        if self.tokenizer.family is not None:
            chat = [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
            return self.tokenizer.encode(self.tokenizer.apply_chat_template(chat, add_generation_prompt=False))
        return self.tokenizer.encode(f"{question}\n\n{solution}", add_special_tokens=True)

    def logits(self, sequences: list[list[int]]) -> list[float]:
        """The head's logit z of each token sequence, in float64, batched (synchronously)."""
        out = [0.0] * len(sequences)
        device = self.model.score.weight.device
        with self._lock, torch.inference_mode():
            for batch in length_batches([len(s) for s in sequences], self.max_batch_tokens):
                ids, valid = right_padded([sequences[i] for i in batch], device)  # (B, T)
                for i, z in zip(batch, self.model(ids, valid)[:, 0].double().tolist()):  # (B,)
                    out[i] = z
        return out

    def outcome_scores(self, question: str, solutions: list[str]) -> list[float]:
        """o = sigmoid(z) of each solution, synchronously."""
        logits = torch.tensor(self.logits([self.inputs(question, s) for s in solutions]), dtype=torch.float64)
        return torch.sigmoid(logits).tolist()

    async def orm(self, question: str, solutions: list[str]) -> list[float]:
        return await asyncio.to_thread(self.outcome_scores, question, solutions)
