"""Tokenizer: `tokenizer.json` through `tokenizers`, `tokenizer.model` through sentencepiece, and
chat templates for the two families we serve, rendered in Python to exactly the strings the
models' own jinja templates produce:

    ChatML (SmolLM2, Qwen):  <|im_start|>{role}\\n{content}<|im_end|>\\n ... <|im_start|>assistant\\n
                             (after the template's default system turn when the first message is
                             not a system message)
    Llama-3:                 <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n
                             {content.strip()}<|eot_id|> ... <|start_header_id|>assistant<|end_header_id|>\\n\\n
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .registry import resolve_model_dir

# A ChatML template's default system turn: a literal string in it (SmolLM2's, Qwen2.5's "You are
# Qwen, ..."); the content may not cross a quote or a jinja tag (Qwen2.5's tools branch opens a
# system turn whose text is template code).
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}]*?)<\|im_end\|>")
_LLAMA31_DATE = "26 Jul 2024"  # the Llama-3.1 template's default `date_string`


class Tokenizer:
    def __init__(self, backend, kind: str, bos_token: str | None, eos_token_ids: tuple[int, ...],
                 chat_template: str | None):
        self._backend, self._kind = backend, kind  # kind: "hf" (tokenizers) | "sp" (sentencepiece)
        self.bos_token = bos_token
        self.chat_template = chat_template
        self.family = _chat_family(chat_template)
        ends = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}.get(self.family)
        end_id = self.token_to_id(ends) if ends else None
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids + ((end_id,) if end_id is not None else ())))

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size() if self._kind == "hf" else self._backend.vocab_size()

    def token_to_id(self, token: str) -> int | None:
        if self._kind == "hf":
            return self._backend.token_to_id(token)
        i = self._backend.piece_to_id(token)
        return None if i == self._backend.unk_id() and token != self._backend.id_to_piece(i) else i

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in `text` map to their ids (as HF tokenizers do);
        BOS/EOS are added only when asked."""
        if self._kind == "hf":
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        ids = self._backend.encode(text)
        return [self._backend.bos_id()] + ids if add_special_tokens and self._backend.bos_id() >= 0 else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if self._kind == "hf":
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self._backend.decode(list(ids))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] -> prompt text."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} must be a dict with string 'role' and 'content', got {m!r}")
        if self.family == "chatml":
            return _render_chatml(messages, add_generation_prompt, self.chat_template)
        if self.family == "llama3":
            return _render_llama3(messages, add_generation_prompt, self.chat_template, self.bos_token or "")
        raise ValueError("this tokenizer has no chat template of a known family (ChatML or Llama-3); "
                         "format the prompt yourself and call encode()")


def _chat_family(template: str | None) -> str | None:
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    return None


def _render_chatml(messages, add_generation_prompt, template) -> str:
    out = ""
    m = _CHATML_DEFAULT_SYSTEM.search(template)
    if m and messages and messages[0]["role"] != "system":
        out += f"<|im_start|>system\n{m.group(1)}<|im_end|>\n"
    out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _render_llama3(messages, add_generation_prompt, template, bos) -> str:
    def head(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    out = bos
    if "Cutting Knowledge Date" in template:  # Llama-3.1+: a system turn is always emitted
        system = messages[0]["content"].strip() if messages and messages[0]["role"] == "system" else ""
        messages = messages[1:] if messages and messages[0]["role"] == "system" else messages
        out += (head("system") + "Cutting Knowledge Date: December 2023\n"
                f"Today Date: {_LLAMA31_DATE}\n\n{system}<|eot_id|>")
    out += "".join(head(m["role"]) + m["content"].strip() + "<|eot_id|>" for m in messages)
    return out + (head("assistant") if add_generation_prompt else "")


def load_tokenizer(path_or_name: str | os.PathLike) -> Tokenizer:
    """Tokenizer of a model directory (or known model name)."""
    model_dir = resolve_model_dir(path_or_name)
    tok_cfg = _read_json(model_dir / "tokenizer_config.json")
    cfg = _read_json(model_dir / "config.json")
    if (model_dir / "tokenizer.json").exists():
        from tokenizers import Tokenizer as HFTokenizer

        backend, kind = HFTokenizer.from_file(str(model_dir / "tokenizer.json")), "hf"
    elif (model_dir / "tokenizer.model").exists():
        import sentencepiece

        backend, kind = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")), "sp"
    else:
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {model_dir}")
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # some configs store named templates
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    eos = cfg.get("eos_token_id")
    eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    tok = Tokenizer(backend, kind, _token_str(tok_cfg.get("bos_token")), eos_ids, template)
    eos_tok = _token_str(tok_cfg.get("eos_token"))
    if eos_tok is not None and tok.token_to_id(eos_tok) is not None:
        tok.eos_token_ids = tuple(dict.fromkeys(tok.eos_token_ids + (tok.token_to_id(eos_tok),)))
    return tok


def _token_str(t) -> str | None:
    return t.get("content") if isinstance(t, dict) else t


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
