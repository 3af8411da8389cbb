"""Engine: batched generation with a KV cache, prefix sharing and continuous batching.

    waiting requests --admit--> packed prefill (one forward for several prompts, no padding;
                                 a long prefix they all share prefilled once, then forked)
                                 -> first token of each of the n samples, cache forked n ways
    running rows 0..B-1 --step--> one batched decode forward -> sample B tokens -> retire
                                 finished rows (compacting the cache) -> admit more -> ...

Speculative decoding (exact): each row drafts up to `draft_tokens` tokens from its own text
(draft.py), fewer as rows grow (VERIFY_POSITIONS), one forward verifies [last token, drafts]
of every row, each row keeps its longest accepted prefix plus one token the model chose
(sampling.verify_drafts), and the cache forgets the rejected columns. Greedy output is the
same token for token; sampled output has the same distribution.

On CPU the engine gives the model prepacked weights (`Transformer.prepack`, kernels/linear.py)
for its forwards; on CUDA, `cuda_graphs=True` replays plain decode steps as
graphs (cuda_graph.py).

Requests can arrive from other threads at any time (`submit`); they join the batch between
decode steps. `generate` is the simple synchronous front: submit, run steps, collect. A server
drives the engine from a background thread between `start()` and `stop()`.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from scoreflow.llama import Tokenizer, Transformer

from .cuda_graph import GraphedDecode
from .draft import NgramIndex
from .kv_cache import KVCache
from .sampling import SamplingParams, sample, splitmix64, token_logprobs, verify_drafts

MAX_BATCH = 4096  # KV-cache slots at most: far past what one decode forward batches well
SHARED_PREFIX_MIN = 64  # common prompt tokens from which they are prefilled once and read once per decode step
DRAFT_TOKENS = 4  # prompt-lookup tokens drafted per row and step
VERIFY_POSITIONS = 12  # rows x (1 + drafts) a verify pass may hold and still cost about one decode step


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # most likely alternatives (token id, logprob)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "cancelled" | "error"
    logprobs: list[TokenLogprob] | None
    prompt_tokens: int


@dataclass
class DraftStats:
    """Speculation so far: verify passes, tokens drafted, drafts accepted (each saved a forward)."""

    verify_steps: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass(eq=False)  # identity, not field-by-field equality
class _Sequence:
    """One sample being generated; `on_update(seq, new_text)` streams text as it firms up."""

    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    request: _Request
    ids: list[int] = field(default_factory=list)
    text: str = ""  # what has been streamed (held back: a possible start of a stop string)
    decoded: str = ""  # the text of ids[:read_offset], built incrementally
    prefix_offset: int = 0
    read_offset: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    lookup: NgramIndex | None = None  # prompt + ids, for drafts (built at the first draft)

    def draft(self, n_tokens: int) -> list[int]:
        """Up to n_tokens guessed from the row's own text (never past max_tokens)."""
        if self.lookup is None:
            self.lookup = NgramIndex(self.prompt_ids + self.ids)
        else:
            self.lookup.extend(self.ids[len(self.lookup.tokens) - len(self.prompt_ids):])
        return self.lookup.draft(min(n_tokens, self.params.max_tokens - len(self.ids) - 1))


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_update: Callable | None
    seqs: list[_Sequence] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def completions(self) -> list[Completion]:
        return [Completion(s.text, s.ids, s.finish_reason, s.logprobs if self.params.logprobs is not None
                           else None, len(self.prompt_ids)) for s in self.seqs]


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch: int = 16, max_seq_len: int = 2048,
                 prefill_tokens: int = 4096, draft_tokens: int = DRAFT_TOKENS, prepack: bool = True,
                 cuda_graphs: bool = False):
        """max_batch x max_seq_len sizes the KV cache (allocated once); prefill_tokens bounds the
        tokens one packed prefill forward may take; draft_tokens = 0 turns speculation off;
        prepack: keep a second, prepacked copy of the weights for the engine's forwards
        (`Transformer.prepack`: CPU fp32 only, twice the weight memory); cuda_graphs: replay plain
        decode steps as CUDA graphs (cuda_graph.py; on CPU the same fixed-shape step, eagerly)."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch={max_batch} is out of range: pass 1 to {MAX_BATCH} sequences (the KV cache "
                             "holds max_batch x max_seq_len positions)")
        self.model, self.tokenizer = model, tokenizer
        if prepack:
            model.prepack()
        self.device = model.embed_tokens.weight.device
        self.max_seq_len = min(max_seq_len, model.config.max_position_embeddings)
        self.cache = KVCache.for_model(model, max_batch, self.max_seq_len)
        self.graphed = GraphedDecode(model, self.cache) if cuda_graphs else None
        self.prefill_tokens, self.draft_tokens = prefill_tokens, draft_tokens
        self.draft_stats = DraftStats()
        self.eos = set(tokenizer.eos_token_ids)
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Sequence] = []  # row i of the cache holds _running[i]
        self._lock = threading.Lock()  # one driver of the model at a time
        self._seed_source = random.Random()
        self._shared_key, self._shared_len = None, 0  # the running requests and their common prompt prefix
        self._worker: threading.Thread | None = None
        self._users, self._users_lock, self._stopping = 0, threading.Lock(), False  # start() calls not yet stopped
        self._wake = threading.Event()
        self.error: str | None = None  # the last failure of the background worker, for health checks

    # -- public API --------------------------------------------------------------------------
    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] = SamplingParams(),
                 on_step: Callable[[int], None] | None = None) -> list[Completion]:
        """n completions per prompt, prompt-major; `params` is shared or one per prompt.
        `on_step(tokens)`, if given, is called after every step with the tokens generated so far."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(per_prompt)} SamplingParams for {len(prompts)} prompts")
        requests = [self.submit(p, sp) for p, sp in zip(prompts, per_prompt)]
        self._run_until_done(requests, on_step)
        return [c for r in requests for c in r.completions()]

    def generate_streaming(self, prompt: str | list[int], params: SamplingParams,
                           on_update: Callable) -> Completion:
        """One completion, calling on_update(seq, new_text) as text firms up."""
        req = self.submit(prompt, replace(params, n=1), on_update)
        self._run_until_done([req])
        return req.completions()[0]

    def _run_until_done(self, requests: list[_Request], on_step: Callable[[int], None] | None = None) -> None:
        """Drive the scheduler here, or just wait when a background thread drives it."""
        while not all(r.done.is_set() for r in requests):
            if self._worker is not None:
                next(r for r in requests if not r.done.is_set()).done.wait(0.05)
            else:
                self.step()
            if on_step is not None:
                on_step(sum(len(s.ids) for r in requests for s in r.seqs))

    def submit(self, prompt: str | list[int], params: SamplingParams, on_update: Callable | None = None) -> _Request:
        """Queue a request (thread-safe); it joins the running batch at the next step."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("empty prompt")
        if len(ids) + params.max_tokens > self.max_seq_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"engine's max_seq_len {self.max_seq_len}")
        if params.n > self.cache.n_slots:
            raise ValueError(f"n={params.n} exceeds the engine's max_batch {self.cache.n_slots}")
        base = params.seed if params.seed is not None else self._seed_source.getrandbits(63)
        req = _Request(ids, params, on_update)
        req.seqs = [_Sequence(ids, params, splitmix64(base + i) if i else base, req) for i in range(params.n)]
        self._inbox.put(req)
        self._wake.set()
        return req

    def cancel(self, req: _Request) -> None:
        req.cancelled = True
        self._wake.set()

    def start(self) -> None:
        """Drive the engine from a background thread (for servers). Calls pair up with stop():
        the worker runs until every start() has had its stop()."""
        with self._users_lock:
            self._users += 1
            if self._worker is None:
                self._stopping = False
                self._worker = threading.Thread(target=self._serve_forever, daemon=True, name="scoreflow-engine")
                self._worker.start()

    def stop(self) -> None:
        """Undo one start(). The last one lets the worker finish its current step, joins it (a
        thread still inside torch at interpreter exit aborts the process), and ends the requests
        in flight with finish_reason "cancelled". start() may follow."""
        with self._users_lock:
            self._users = max(0, self._users - 1)
            if self._users or self._worker is None:
                return
            self._stopping = True
            self._wake.set()
            self._worker.join()
            self._worker = None
        with self._lock:
            self._take_inbox()
        self._end_in_flight("cancelled")

    def _serve_forever(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            try:
                while not self._stopping and self.step():
                    pass
            except Exception:  # never let one bad step kill the server: fail what was in flight
                traceback.print_exc()
                self.error = traceback.format_exc(limit=3)
                self._end_in_flight("error")

    def _end_in_flight(self, reason: str) -> None:
        """End every waiting and running request with finish_reason `reason` and free the cache."""
        with self._lock:
            for req in list(self._waiting) + list({id(s.request): s.request for s in self._running}.values()):
                if not req.done.is_set():
                    self._finish_request(req, reason)
            for row in range(len(self._running)):
                self.cache.release(row)
            self._waiting.clear()
            self._running.clear()

    # -- one scheduler step ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> bool:
        """Admit waiting requests, decode one token for every running row. False when idle."""
        with self._lock:
            self._take_inbox()
            self._drop_cancelled()
            self._admit()
            if self._running:
                self._decode()
            return bool(self._running or self._waiting)

    def _take_inbox(self) -> None:
        while not self._inbox.empty():
            self._waiting.append(self._inbox.get())

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(req)
            self._finish_request(req, "cancelled")
        for seq in [s for s in self._running if s.request.cancelled]:
            seq.finish_reason = "cancelled"
        self._retire()

    def _admit(self) -> None:
        """Packed prefill of as many waiting requests as fit in free slots and the token budget.
        A long prefix that all their prompts share (a system message, ScoreFlow's guide) is
        prefilled once and forked to each prompt's slot; the packed pass then runs the rest."""
        batch: list[_Request] = []
        free = self.cache.n_slots - len(self._running)
        while self._waiting:
            req = self._waiting[0]
            prompts = [r.prompt_ids for r in batch] + [req.prompt_ids]
            shared = shared_prompt_prefix(prompts)
            tokens = shared + sum(len(p) - shared for p in prompts)  # what the prefill forwards run
            if req.params.n > free or (batch and tokens > self.prefill_tokens):
                break
            self._waiting.popleft()
            batch.append(req)
            free -= req.params.n
        if not batch:
            return
        first_rows = []
        for req in batch:  # the prompt goes to the first of the request's n rows
            first_rows.append(len(self._running))
            self._running.extend(req.seqs)
        shared = shared_prompt_prefix([r.prompt_ids for r in batch])
        if shared:
            self._prefill(first_rows[:1], [batch[0].prompt_ids[:shared]])
            self.cache.fork(first_rows[0], first_rows[1:])
        h = self._prefill(first_rows, [r.prompt_ids for r in batch], shared)  # (ΣT, C)
        last = torch.tensor([len(r.prompt_ids) - shared for r in batch], device=self.device).cumsum(0) - 1
        logits = self.model.lm_head(h[last]).float()  # (R, V) one row per request
        rows, row_logits = [], []
        for i, (req, row) in enumerate(zip(batch, first_rows)):
            if req.params.n > 1:  # prefix sharing: prefill once, copy the cache to the other rows
                self.cache.fork(row, list(range(row + 1, row + req.params.n)))
            rows += range(row, row + req.params.n)
            row_logits.append(logits[i: i + 1].expand(req.params.n, -1))
        self._sample_and_append(rows, torch.cat(row_logits))
        self._retire()

    def _prefill(self, slots: list[int], prompts: list[list[int]], shared: int = 0) -> torch.Tensor:
        """One packed forward over the prompts' tokens from position `shared` on (the slots hold
        the first `shared`) -> hidden states (ΣT, C)."""
        ids = torch.tensor([t for p in prompts for t in p[shared:]], device=self.device)[None]  # (1, ΣT)
        plan = self.cache.plan_packed(slots, [len(p) for p in prompts], shared)
        return self.model.trunk(ids, plan.pos[None], plan)[0]

    def _decode(self) -> None:
        B = len(self._running)
        per_row = min(self.draft_tokens, VERIFY_POSITIONS // B - 1)  # 4, 4, 3, 2, 1, 1, 0... at B = 1, 2, 3...
        if per_row > 0:
            room = min(self.cache.max_seq - n for n in self.cache.lengths[:B]) - 1  # columns left for drafts
            drafts = [s.draft(min(per_row, room)) for s in self._running]
            if any(drafts):
                return self._verify(drafts)
        x = torch.tensor([[s.ids[-1]] for s in self._running], device=self.device)  # (B, 1)
        shared = self._shared_prefix() if B > 1 else 0
        if self.graphed is not None and not shared:
            logits = self.graphed.logits(x)  # (B, V)
        else:
            pos = torch.tensor([[self.cache.lengths[b]] for b in range(B)], device=self.device)  # (B, 1)
            h = self.model.trunk(x, pos, self.cache.plan_decode(B, shared))  # (B, 1, C)
            logits = self.model.lm_head(h[:, 0]).float()  # (B, V)
        self._sample_and_append(list(range(B)), logits)
        self._retire()

    def _shared_prefix(self) -> int:
        """Prompt tokens every running row starts with (cached per set of running requests), or 0
        when fewer than SHARED_PREFIX_MIN: then one attention over each row's cache is cheaper."""
        key = tuple({id(s.request): s.request for s in self._running}.values())  # identity; holds them alive
        if key != self._shared_key:
            common = len(os.path.commonprefix([r.prompt_ids for r in key]))
            self._shared_key, self._shared_len = key, common if common >= SHARED_PREFIX_MIN else 0
        return self._shared_len

    def _verify(self, drafts: list[list[int]]) -> None:
        """One forward over each row's [last token, draft]; keep the accepted prefix + one token."""
        B, T = len(drafts), 1 + max(map(len, drafts))
        self.draft_stats.verify_steps += 1
        self.draft_stats.drafted += sum(map(len, drafts))
        x = torch.zeros(B, T, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.bool)
        for b, (seq, draft) in enumerate(zip(self._running, drafts)):
            x[b, : 1 + len(draft)] = torch.tensor([seq.ids[-1], *draft])
            valid[b, : 1 + len(draft)] = True
        start = list(self.cache.lengths[:B])
        pos = torch.tensor(start)[:, None] + torch.arange(T)  # (B, T), right padding past each draft
        x, pos, valid = x.to(self.device), pos.to(self.device), valid.to(self.device)
        h = self.model.trunk(x, pos, self.cache.plan_append(valid))  # (B, T, C)
        logits = self.model.lm_head(h[valid]).float()  # (N, V): row b's 1 + len(draft_b) positions in order
        seqs = [s for s, d in zip(self._running, drafts) for _ in range(1 + len(d))]
        guesses = [t for d in drafts for t in [*d, -1]]
        steps = [len(s.ids) + j for s, d in zip(self._running, drafts) for j in range(1 + len(d))]
        accept, tokens = verify_drafts(logits, torch.tensor(guesses, device=self.device), [s.params for s in seqs],
                                       [s.seed for s in seqs], steps)
        chosen = torch.where(accept, torch.tensor(guesses, device=self.device), tokens)  # (N,)
        logprobs, accept, chosen, at = self._logprobs(seqs, logits, chosen), accept.tolist(), chosen.tolist(), 0
        for b, (seq, draft) in enumerate(zip(self._running, drafts)):
            kept = 0  # cached columns of this step that stay: the last token and the accepted drafts
            for j in range(1 + len(draft)):
                if seq.finish_reason is not None:
                    break
                kept += 1
                self._emit(seq, chosen[at + j], logprobs[at + j])
                if j == len(draft) or not accept[at + j]:
                    break
                self.draft_stats.accepted += 1
            self.cache.truncate(b, start[b] + kept)
            at += 1 + len(draft)
        self._retire()

    def _sample_and_append(self, rows: list[int], logits: torch.Tensor) -> None:
        seqs = [self._running[r] for r in rows]
        tokens = sample(logits, [s.params for s in seqs], [s.seed for s in seqs], [len(s.ids) for s in seqs])
        for seq, tok, lp in zip(seqs, tokens.tolist(), self._logprobs(seqs, logits, tokens)):
            self._emit(seq, tok, lp)

    @staticmethod
    def _logprobs(seqs: list[_Sequence], logits: torch.Tensor, tokens: torch.Tensor) -> list[TokenLogprob | None]:
        """The chosen token's log-probability (and top alternatives) where a row asks for them."""
        if all(s.params.logprobs is None for s in seqs):
            return [None] * len(seqs)
        chosen, top = token_logprobs(logits, tokens, max(s.params.logprobs or 0 for s in seqs))
        out = []
        for i, (seq, tok) in enumerate(zip(seqs, tokens.tolist())):
            k = seq.params.logprobs
            alts = list(zip(top.indices[i, :k].tolist(), top.values[i, :k].tolist())) if k else []
            out.append(None if k is None else TokenLogprob(tok, chosen[i].item(), alts))
        return out

    def _emit(self, seq: _Sequence, tok: int, logprob: TokenLogprob | None) -> None:
        """Append one generated token to seq (EOS finishes it instead) and update its text."""
        if tok in self.eos and not seq.params.ignore_eos:
            seq.finish_reason = "stop"
            return
        seq.ids.append(tok)
        if logprob is not None:
            seq.logprobs.append(logprob)
        self._update_text(seq)
        if seq.finish_reason is None and len(seq.ids) >= seq.params.max_tokens:
            seq.finish_reason = "length"

    def _update_text(self, seq: _Sequence) -> None:
        """Decode the new token, cut at the first stop string, stream what is firm."""
        if not (seq.params.stop or seq.request.on_update):
            return
        delta, seq.prefix_offset, seq.read_offset = incremental_text(self.tokenizer, seq.ids, seq.prefix_offset,
                                                                     seq.read_offset)
        seq.decoded += delta
        text = seq.decoded
        if seq.params.stop:
            hits = [i for i in (text.find(s, max(0, len(seq.text) - len(s))) for s in seq.params.stop) if i >= 0]
            if hits:
                text, seq.finish_reason = text[: min(hits)], "stop"
        firm = text.rstrip("\ufffd")
        if seq.params.stop and seq.finish_reason is None:  # hold back a possible stop-string prefix
            hold = max(len(s) - 1 for s in seq.params.stop)
            firm = firm[: max(len(seq.text), len(firm) - hold)]
        if len(firm) > len(seq.text):
            new, seq.text = firm[len(seq.text):], firm
            if seq.request.on_update:
                seq.request.on_update(seq, new)

    def _retire(self) -> None:
        """Remove finished rows, moving the last running row into each hole (rows stay 0..B-1)."""
        row = 0
        while row < len(self._running):
            seq = self._running[row]
            if seq.finish_reason is None:
                row += 1
                continue
            last = len(self._running) - 1
            if row != last:
                self.cache.move(last, row)
            else:
                self.cache.release(row)
            self._running[row] = self._running[last]
            self._running.pop()
            req = seq.request
            if all(s.finish_reason is not None for s in req.seqs) and not req.done.is_set():
                self._finish_request(req, None)

    def _finish_request(self, req: _Request, reason: str | None) -> None:
        for s in req.seqs:
            if reason is not None:
                s.finish_reason = s.finish_reason or reason
            full = self.tokenizer.decode(s.ids, skip_special_tokens=True)
            if s.params.stop:
                cut = [i for i in (full.find(x) for x in s.params.stop) if i >= 0]
                full = full[: min(cut)] if cut else full
            if req.on_update and len(full) > len(s.text):
                req.on_update(s, full[len(s.text):])
            s.text = full
        req.done.set()
        if req.on_update:
            req.on_update(None, None)  # end of stream


def shared_prompt_prefix(prompts: list[list[int]]) -> int:
    """The tokens all of several prompts start with, prefilled once for all of them; 0 when fewer
    than SHARED_PREFIX_MIN. Each prompt keeps at least one token of its own: its logits start
    the prompt's sampling."""
    if len(prompts) < 2:
        return 0
    common = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    return common if common >= SHARED_PREFIX_MIN else 0


def incremental_text(tokenizer, ids: list[int], prefix_offset: int, read_offset: int) -> tuple[str, int, int]:
    """The text that ids[read_offset:] add to ids[:read_offset], and the new offsets; linear in the
    sequence length where decoding everything per token would be quadratic.

    Decodes a window that starts at prefix_offset (the previous read point), so merges and
    leading-space rules see the token before; returns "" (offsets unchanged) while the window
    ends in an incomplete UTF-8 character, which the next tokens complete.
    """
    prefix = tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=True)
    window = tokenizer.decode(ids[prefix_offset:], skip_special_tokens=True)
    if len(window) <= len(prefix) or window.endswith("\ufffd"):
        return "", prefix_offset, read_offset
    return window[len(prefix):], read_offset, len(ids)
