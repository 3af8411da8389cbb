"""One short check on one CUDA GPU (<= 8 minutes): our decode and our Score-DPO step on a
Llama-3.1-8B-shaped model with random bf16 weights, against the memory floor, transformers
`generate` and TRL's DPO step on the very same weights; then the trainer the commands use on a
Llama-3.2-1B-shaped model, against the memory plan. Prints two tables.

    python bench/gpu_check.py               # CUDA: the Llama shapes, bf16
    python bench/gpu_check.py --cpu-smoke   # CPU, fp32, tiny shapes: what CI runs, so it never rots

No weights can be downloaded on a lent GPU machine, so transformers builds the model with its
own random initialisation and ours takes the same tensors (no copy). Rows:

- copy bandwidth: a device-to-device copy, bytes read + written per second; the decode floor is
  the weight bytes over it (every weight read once per step, nothing else);
- decode at batch 1 and 32: ms per step after the prefill, ours (speculation off: random weights
  accept no draft) and transformers (its total for N tokens minus its total for 1, over N - 1);
- Score-DPO step: one optimizer step, LoRA r8 on q,v, one packed pair of 900 + 300 + 300
  tokens, bf16 autocast on CUDA; TRL's DPOTrainer + PEFT on the same model and lengths, when
  trl is installed (it is not on the lent machines' image: carry it as wheels, see the device
  notes);
- decode with CUDA-graph capture (`Engine(cuda_graphs=True)`, engine/cuda_graph.py) at batch 1
  and 32, against the same engine without it (on CPU, --cpu-smoke, the fixed-shape step runs
  eagerly: the row then checks the path, not the speed-up);
- training (the second table): `train_dpo`, the trainer `python -m scoreflow.train` runs, on
  random bf16 weights made on the GPU (LoRA r8 on q,v in fp32, AdamW), one question of a
  1,000-token prompt and 8 responses of 1,000 tokens, in pair grouping (4 pairs, 4 steps) and
  question grouping (one step), with gradient checkpointing off and on: seconds per step, and
  the peak of `torch.cuda.max_memory_allocated` against the memory plan's peak for the same
  settings (scoreflow/memory_plan.py). On CPU the peak is not measured here
  (bench/memory_plan.py measures it).
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time

import torch

from scoreflow.dpo.batch import PairExample, pack, pair_logps
from scoreflow.dpo.config import TrainConfig
from scoreflow.dpo.loss import score_dpo_loss
from scoreflow.dpo.trainer import train_dpo
from scoreflow.engine import Engine, SamplingParams
from scoreflow.llama import LlamaConfig, Transformer
from scoreflow.lora import apply_lora, disable_adapter
from scoreflow.memory_plan import GiB, Run, Shape, plan

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192,
                   rms_norm_eps=1e-5)
TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, tie_word_embeddings=True)
PAIR = (900, 300, 300)  # prompt, chosen, rejected tokens
TINY_PAIR = (90, 30, 30)
QUESTION = (1000, 1000, 8)  # prompt tokens, tokens per response, responses
TINY_QUESTION = (60, 20, 4)


class NoText:
    """The engine's tokenizer for random weights: no EOS, and no text to decode."""

    eos_token_ids: tuple[int, ...] = ()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(shape: dict, device: str, dtype: torch.dtype):
    """(transformers LlamaForCausalLM, our Transformer) sharing one set of random weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).to(dtype).eval()
    weight = hf.model.embed_tokens.weight
    assert (weight.dtype, weight.device.type) == (dtype, device), (weight.dtype, weight.device)
    with torch.device("meta"):
        ours = Transformer(LlamaConfig(**shape))
    state = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    ours.load_state_dict(state, assign=True, strict=False)
    ours.init_buffers(device)
    assert not any(p.is_meta for p in ours.parameters()), "a weight was not shared"
    return hf, ours.requires_grad_(False).eval()


def logits_gap(hf, ours, device: str) -> float:
    """max |ours - transformers| / max |transformers| over one 64-token forward: the two models
    compute the same function (bf16 rounding aside)."""
    ids = torch.randint(0, ours.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        a, b = ours(ids).float(), hf(ids).logits.float()
    return ((a - b).abs().max() / b.abs().max()).item()


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes read + written per second by one device-to-device copy (best of 5)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def ours_decode_ms(model, device: str, batch: int, prompt: int, new: int, cuda_graphs: bool = False) -> float:
    engine = Engine(model, NoText(), max_batch=batch, max_seq_len=prompt + new + 1, draft_tokens=0,
                    cuda_graphs=cuda_graphs)
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).tolist()

    def per_step(tokens: int) -> float:
        requests = [engine.submit(p, SamplingParams(max_tokens=tokens, ignore_eos=True)) for p in prompts]
        engine.step()  # the packed prefill and the first token
        sync(device)
        t, steps = time.perf_counter(), 0
        while not all(r.done.is_set() for r in requests):
            engine.step()
            steps += 1
        sync(device)
        return (time.perf_counter() - t) / steps * 1e3

    per_step(3)  # warm-up: allocator, and the graph captures at these shapes
    return per_step(new)


def hf_decode_ms(hf, device: str, batch: int, prompt: int, new: int) -> float:
    ids = torch.randint(0, hf.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(batch))
    ids = ids.to(device)

    def total(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=0, eos_token_id=None)
        sync(device)
        return time.perf_counter() - t

    total(2)  # warm-up
    return (total(new) - total(1)) / (new - 1) * 1e3


def ours_dpo_step_s(model, device: str, steps: int, pair: tuple[int, int, int]) -> float:
    """Median seconds of one Score-DPO optimizer step on one packed pair (after a warm-up step)."""
    apply_lora(model, r=8, alpha=16, dropout=0.01, targets=("q_proj", "v_proj"))
    g = torch.Generator().manual_seed(0)
    P, W, L = (torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in pair)
    packed = pack([PairExample(tuple(P), tuple(W), tuple(L), s_w=1.0, s_l=0.0)]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    model.train()
    for _ in range(steps + 1):
        sync(device)
        t = time.perf_counter()
        with autocast:
            with torch.no_grad(), disable_adapter(model):
                ref_w, ref_l = pair_logps(model, packed)
            pol_w, pol_l = pair_logps(model, packed)
            one = torch.ones(1, device=device)
            score_dpo_loss(pol_w, pol_l, ref_w, ref_l, one, 0 * one).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def trl_dpo_step_s(hf, device: str, steps: int, pair: tuple[int, int, int]) -> float | str:
    """Median seconds of TRL's DPO step (DPOTrainer + PEFT LoRA r8 q,v) on the same model, or why not."""
    try:
        import datasets
        from peft import LoraConfig
        from transformers import AutoTokenizer, TrainerCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        return f"not run: {e.name} is not installed"
    from scoreflow.llama.registry import DEFAULT_MODEL, resolve_model_dir

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_dir(DEFAULT_MODEL))  # any tokenizer with ids < vocab
    except (OSError, ValueError) as e:
        return f"not run: no tokenizer ({' '.join(str(e).split())[:80]})"
    words = lambda n: " ".join(["token"] * n)  # noqa: E731  about one token per word
    data = datasets.Dataset.from_list([{"prompt": words(pair[0]), "chosen": words(pair[1]),
                                        "rejected": words(pair[2])}] * (steps + 1))
    ends: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            sync(device)
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, beta=0.1, learning_rate=1e-6, per_device_train_batch_size=1,
                         max_steps=steps + 1, max_length=None, bf16=device == "cuda", use_cpu=device == "cpu",
                         gradient_checkpointing=False, report_to="none", logging_strategy="no",
                         save_strategy="no", dataloader_num_workers=0)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.01, target_modules=["q_proj", "v_proj"],
                          task_type="CAUSAL_LM")
        DPOTrainer(model=hf, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                   callbacks=[Stamp()]).train()
    gaps = [b - a for a, b in zip(ends, ends[1:])]  # step 1 is the warm-up
    return sorted(gaps)[len(gaps) // 2]


def training_rows(shape: dict, device: str, dtype: torch.dtype, question: tuple[int, int, int]) -> list[str]:
    """train_dpo per grouping and checkpointing setting on one question: s/step and peak memory
    against the plan (module docstring)."""
    P, N, k = question
    g = torch.Generator().manual_seed(0)
    ids = lambda n: tuple(torch.randint(0, shape["vocab_size"], (n,), generator=g).tolist())  # noqa: E731
    prompt, responses = ids(P), [ids(N) for _ in range(k)]
    pairs = [PairExample(prompt, responses[i], responses[i + 1], s_w=1.0, s_l=0.0) for i in range(0, k, 2)]
    rows = []
    for grouping, checkpointing in itertools.product(("pair", "question"), (False, True)):
        with torch.device(device):
            model = Transformer(LlamaConfig(**shape)).to(dtype)
        model.init_buffers(device)
        apply_lora(model, r=8, alpha=16, dropout=0.01, dtype=torch.float32)
        cfg = TrainConfig(lr=1e-6, dpo_grouping=grouping, gradient_checkpointing=checkpointing)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as out:
            sync(device)
            t = time.perf_counter()
            history = train_dpo(model, pairs, out, cfg, progress=False)
            sync(device)
            seconds = (time.perf_counter() - t) / len(history)
        run = Run(k, N, P, 8, grouping, checkpointing, generate_rows=None, kv_round=1)
        planned = max(s.total for s in plan(Shape.of(LlamaConfig(**shape)), run, device))
        measured = torch.cuda.max_memory_allocated() if device == "cuda" else None
        got, ratio = ("-", "-") if measured is None else (f"{measured / GiB:.2f}", f"{measured / planned:.2f}")
        rows.append(f"| {grouping}, checkpointing {'on' if checkpointing else 'off'} | {len(history)} | "
                    f"{seconds:.3f} | {planned / GiB:.2f} | {got} | {ratio} |")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", dest="tiny", action="store_true", help="CPU, fp32, tiny shapes (CI)")
    ap.add_argument("--steps", type=int, default=None, help="training steps timed after one warm-up (default: 3; 1 with --cpu-smoke)")
    a = ap.parse_args()
    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --cpu-smoke on a CPU")
    device, dtype, shape = ("cpu", torch.float32, TINY) if a.tiny else ("cuda", torch.bfloat16, LLAMA_31_8B)
    prompt, new, pair = (32, 8, TINY_PAIR) if a.tiny else (128, 64, PAIR)
    steps = a.steps or (1 if a.tiny else 3)
    t0 = time.perf_counter()
    hf, ours = build(shape, device, dtype)
    weights = sum(p.numel() * p.element_size() for n, p in ours.named_parameters() if "embed_tokens" not in n)
    bandwidth = copy_bandwidth(device, 1 << (24 if a.tiny else 30))
    floor_ms = weights / bandwidth * 1e3
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"# gpu_check on {name}: {'tiny' if a.tiny else 'Llama-3.1-8B'} shape, {dtype}, random weights; "
          f"weights read per decode step {weights / 1e9:.2f} GB; copy bandwidth {bandwidth / 1e9:.0f} GB/s "
          f"-> decode floor {floor_ms:.2f} ms/step; torch {torch.__version__}")
    print(f"same function: max |logits difference| / max |logits| = {logits_gap(hf, ours, device):.1e}")
    print("| measurement | ours | transformers / TRL | ours vs them | ours vs floor |\n|---|---|---|---|---|")
    for batch in (1, 32):
        mine, theirs = ours_decode_ms(ours, device, batch, prompt, new), hf_decode_ms(hf, device, batch, prompt, new)
        print(f"| decode, batch {batch}, ms/step | {mine:.2f} ({batch / mine * 1e3:.0f} tok/s) | {theirs:.2f} "
              f"({batch / theirs * 1e3:.0f} tok/s) | {theirs / mine:.2f}x | {mine / floor_ms:.1f}x the floor |",
              flush=True)
    for batch in (1, 32):
        graphed, eager = (ours_decode_ms(ours, device, batch, prompt, new, cuda_graphs) for cuda_graphs in (True, False))
        print(f"| decode with CUDA-graph capture, batch {batch}, ms/step | {graphed:.2f} | ours without: {eager:.2f} "
              f"| {eager / graphed:.2f}x | {graphed / floor_ms:.1f}x the floor |", flush=True)
    mine = ours_dpo_step_s(ours, device, steps, pair)
    theirs = trl_dpo_step_s(hf, device, steps, pair)
    ratio = f"{theirs / mine:.2f}x" if isinstance(theirs, float) else "-"
    shown = f"{theirs:.3f}" if isinstance(theirs, float) else theirs
    print(f"| Score-DPO step, s (LoRA r8 q,v; {'+'.join(map(str, pair))} tokens) | {mine:.3f} | {shown} | {ratio} | |")
    question = TINY_QUESTION if a.tiny else QUESTION
    print(f"\n# train_dpo on the {'tiny' if a.tiny else 'Llama-3.2-1B'} shape, {dtype}: one question, "
          f"{question[0]}-token prompt, {question[2]} responses of {question[1]} tokens")
    print("| grouping | steps | s/step | planned peak, GB | measured peak, GB | measured / planned |")
    print("|---|---|---|---|---|---|")
    for row in training_rows(TINY if a.tiny else LLAMA_32_1B, device, dtype, question):
        print(row, flush=True)
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
