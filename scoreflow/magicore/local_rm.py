"""LocalLMRewardModel: a causal LM run here as ORM and PRM (interfaces: reward.py), Math-Shepherd
style. The steps are joined with a step tag after each,

    "{question} {step_1} ки\\n{step_2} ки\\n...{step_n} ки"

one forward pass reads the next-token logits at every tag, and step j's score is

    s_j = P(good | prefix through tag j) / (P(good) + P(bad)) = sigmoid(l_good - l_bad)

(a chain's PRM score is the product of its s_j: difficulty.Chain.prm_product). With a real
Math-Shepherd checkpoint (`peiyi9979/math-shepherd-mistral-7b-prm`, HF format, Mistral = Llama
layout) the defaults are its own: tag "ки", good "+", bad "-", no chat template, and the text
encoded as its reference code encodes it, `tokenizer.encode(text)`, i.e. after the tokenizer's
BOS where its tokenizer.json adds one (Mistral's does). The ORM of a causal LM asks "Is this
solution correct?" after the solution and reads o = P(Yes) / (P(Yes) + P(No)) at the next
token. Reward models with a value head (*ForSequenceClassification) load through
value_head_rm.py.

For a chat model (the tokenizer has a chat template, e.g. our default SmolLM2-135M-Instruct)
the same texts are wrapped in a user turn that explains the tag and the +/- verdicts. That
is a WEAK STAND-IN: the model was never trained to judge steps, its "+"/"-" and Yes/No
probabilities carry little signal about correctness. It exercises the whole pipeline on a
laptop; use a trained PRM/ORM (or the judge) for results that mean something.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

import torch

from scoreflow.llama import DEFAULT_MODEL, Tokenizer, Transformer, load_model, load_tokenizer
from scoreflow.llama.model import MaskedPlan, real_token_positions

from .batches import length_batches, right_padded
from .reward import OutcomeRewardModel, ProcessRewardModel, split_steps


@dataclass(frozen=True)
class RewardLayout:
    """How a causal-LM reward model sees its input. Tokens good/bad/yes/no must each encode
    to one token; the step tag's last token is read. chat=None: use the chat template iff
    the tokenizer has one."""

    step_tag: str = " ки"
    good: str = "+"
    bad: str = "-"
    yes: str = "Yes"
    no: str = "No"
    chat: bool | None = None


PRM_INSTRUCTION = (
    "Judge every step of the solution below. Each step ends with the mark{tag}; read it as the "
    "question \"is this step correct?\", answered {good} for a correct step and {bad} for a wrong one.\n\n"
    "Question: {question}\n\nSolution:\n")
ORM_QUESTION = "Is this solution correct? Answer Yes or No."
ORM_TEXT = "Question: {question}\n\nSolution:\n{solution}\n\n" + ORM_QUESTION


class LocalLMRewardModel(OutcomeRewardModel, ProcessRewardModel):
    """ORM and PRM from one causal LM loaded by `scoreflow.llama` (see the module docstring).

    `LocalLMRewardModel(path_or_name)` loads a known model name or an HF-format directory;
    `from_loaded(model, tokenizer)` reuses one already in memory (e.g. the one serving the
    Solver). Forwards run in a worker thread, one at a time, under torch.inference_mode, in
    right-padded batches of at most `max_batch_tokens` (rows x longest row).
    """

    def __init__(self, path_or_name: str | os.PathLike = DEFAULT_MODEL, layout: RewardLayout = RewardLayout(),
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 max_batch_tokens: int = 16384):
        self._bind(load_model(path_or_name, dtype, device), load_tokenizer(path_or_name), layout, max_batch_tokens)

    @classmethod
    def from_loaded(cls, model: Transformer, tokenizer: Tokenizer, layout: RewardLayout = RewardLayout(),
                    max_batch_tokens: int = 16384) -> "LocalLMRewardModel":
        rm = cls.__new__(cls)
        rm._bind(model, tokenizer, layout, max_batch_tokens)
        return rm

    def _bind(self, model: Transformer, tokenizer: Tokenizer, layout: RewardLayout, max_batch_tokens: int) -> None:
        self.model, self.tokenizer, self.layout = model.eval(), tokenizer, layout
        self.max_batch_tokens = max_batch_tokens
        self.chat = tokenizer.family is not None if layout.chat is None else layout.chat
        if not layout.step_tag.strip():
            raise ValueError("RewardLayout.step_tag must contain visible characters")
        self.tag_id = tokenizer.encode(layout.step_tag)[-1]
        self.good_id, self.bad_id, self.yes_id, self.no_id = (
            self._single_token(getattr(layout, name), name) for name in ("good", "bad", "yes", "no"))
        self._lock = threading.Lock()

    def _single_token(self, text: str, name: str) -> int:
        ids = self.tokenizer.encode(text)
        if len(ids) != 1:
            raise ValueError(f"RewardLayout.{name}={text!r} is {len(ids)} tokens for this tokenizer; the reward "
                             f"is read from one token's probability, so pass a single-token string")
        return ids[0]

    def _render(self, content: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}]) if self.chat else content

    def _encode(self, text: str) -> list[int]:
        """Token ids of a rendered text: a chat template writes its own BOS; raw text gets the
        tokenizer's special tokens, as Math-Shepherd's `tokenizer.encode(text)` does."""
        return self.tokenizer.encode(text, add_special_tokens=not self.chat)

    # -- inputs ------------------------------------------------------------------------------
    def prm_inputs(self, question: str, solution: str) -> tuple[list[int], list[int]]:
        """Token ids of the tagged chain and the position of each step's tag (one per step).

        Positions are found by tokenizing the text through each tag: exact whatever else in
        the text shares the tag's token. The tag text is removed from question and steps first."""
        tag = self.layout.step_tag
        def clean(text: str) -> str:
            return text.replace(tag.strip(), "")

        tagged = [clean(step) + tag for step in split_steps(solution)]
        body = "\n".join(tagged)
        head = (PRM_INSTRUCTION.format(tag=tag, good=self.layout.good, bad=self.layout.bad, question=clean(question))
                if self.chat else f"{clean(question)} ")
        full = self._render(head + body)
        ends, offset = [], full.rindex(body)
        for step in tagged:  # character offset just past each tag
            offset += len(step)
            ends.append(offset)
            offset += 1  # the "\n" between steps
        ids = self._encode(full)
        positions = [len(self._encode(full[:end])) - 1 for end in ends]
        if any(ids[p] != self.tag_id for p in positions):
            raise ValueError(f"the step tag {tag!r} merges with the text after it under this tokenizer; choose "
                             f"another RewardLayout.step_tag")
        return ids, positions

    def orm_inputs(self, question: str, solution: str) -> list[int]:
        """Token ids ending where the Yes/No answer comes next."""
        text = ORM_TEXT.format(question=question, solution=solution.strip())
        return self._encode(self._render(text) if self.chat else text + "\n")

    # -- scores ------------------------------------------------------------------------------
    def step_scores(self, question: str, solutions: list[str]) -> list[list[float]]:
        """PRM scores of each solution's steps, synchronously."""
        inputs = [self.prm_inputs(question, s) for s in solutions]
        return self._probabilities([i for i, _ in inputs], [p for _, p in inputs], self.good_id, self.bad_id)

    def outcome_scores(self, question: str, solutions: list[str]) -> list[float]:
        """ORM scores, synchronously."""
        ids = [self.orm_inputs(question, s) for s in solutions]
        return [p[0] for p in self._probabilities(ids, [[len(i) - 1] for i in ids], self.yes_id, self.no_id)]

    async def orm(self, question: str, solutions: list[str]) -> list[float]:
        return await asyncio.to_thread(self.outcome_scores, question, solutions)

    async def prm(self, question: str, solution: str) -> list[float]:
        return (await self.prm_batch(question, [solution]))[0]

    async def prm_batch(self, question: str, solutions: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.step_scores, question, solutions)

    def _probabilities(self, sequences: list[list[int]], positions: list[list[int]], good: int,
                       bad: int) -> list[list[float]]:
        """sigmoid(l_good - l_bad) = P(good) / (P(good) + P(bad)) at `positions` of each sequence."""
        out: list[list[float]] = [[] for _ in sequences]
        device = self.model.embed_tokens.weight.device
        head = self.model.lm_head.weight[[good, bad]].float()  # (2, C)
        with self._lock, torch.inference_mode():
            for batch in length_batches([len(s) for s in sequences], self.max_batch_tokens):
                ids, valid = right_padded([sequences[i] for i in batch], device)  # (B, T)
                hidden = self.model.trunk(ids, real_token_positions(valid), MaskedPlan.causal(valid))  # (B, T, C)
                for row, i in enumerate(batch):
                    logits = (hidden[row, positions[i]].float() @ head.T).double()  # (n_i, 2)
                    out[i] = torch.sigmoid(logits[:, 0] - logits[:, 1]).tolist()
        return out
