"""Qwen2.5-Coder-0.5B-Instruct as ScoreFlow's generator: our engine and trainer vs transformers
(and TRL), CPU fp32, on the workload ScoreFlow gives them. Load time and memory: bench_load.py
--model qwen2.5-coder-0.5b-instruct.

    python bench/bench_qwen.py generate [--prompts 2]          # tok/s, ours vs transformers generate
    python bench/bench_qwen.py dpo [--pairs 3] [--gc]           # s/pair, reference log-probs cached

generate: Q generator prompts (the math guide + a GSM8K validation question, from the packaged
data) x 4 samples, temperature 0.7, top-p 0.95, 256 new tokens, EOS ignored on both sides; ours
with the shared-prefix decode (bench_generate.py's functions), transformers with
num_return_sequences=4 on the converted directory.

dpo: N pairs, each the generator prompt of a different GSM8K question + "<graph>\\n", chosen = the
medprompt baseline workflow, rejected = the cot_sc one (each + "</graph><|im_end|>"); LoRA r8/a16,
dropout 0.01 on q,v; beta 0.1, lr 1e-6, batch 1. Each side runs in a fresh process. Ours: train_dpo,
whose reference pass runs before the steps (so every step finds its reference cached); TRL:
DPOTrainer + PEFT with precompute_ref_log_probs=True. s/pair = the fastest step after the first
(warm-up), median in brackets; peak RSS = the child's high-water mark.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scoreflow.llama import load_model, load_tokenizer
from scoreflow.llama.registry import QWEN_CODER, resolve_model_dir
from scoreflow.optimize.generator import RESPONSE_PREFIX, prompt_ids
from scoreflow.tasks import load_task
from scoreflow.workflow.prompts import generator_prompt

GIB = 1024**3


def questions(n: int) -> list[str]:
    return [q.prompt for q in load_task("gsm8k", "validate").questions[:n]]


# ----------------------------------------------------------------------------- generation


def generate(n_prompts: int) -> None:
    import transformers

    from bench_generate import ours_sampled, theirs_sampled
    from scoreflow.engine import Engine

    transformers.logging.set_verbosity_error()
    tok, model = load_tokenizer(QWEN_CODER), load_model(QWEN_CODER, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(resolve_model_dir(QWEN_CODER), dtype=torch.float32).eval()
    k, new = 4, 256
    batch = [prompt_ids(tok, "math", q) for q in questions(n_prompts)]
    engine = Engine(model, tok, max_batch=len(batch) * k, max_seq_len=max(map(len, batch)) + new)
    print(f"# {QWEN_CODER}, CPU fp32, {torch.get_num_threads()} threads; {platform.machine()}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    print(f"ScoreFlow generation: {len(batch)} prompts ({min(map(len, batch))}-{max(map(len, batch))} tokens) x {k} "
          f"samples, temperature 0.7, top-p 0.95, {new} new tokens")
    print("| engine | tok/s | vs transformers |\n|---|---|---|")
    rates = {"ours, shared-prefix decode": ours_sampled(engine, batch, k, new, True),
             "transformers generate (num_return_sequences=4)": theirs_sampled(hf, batch, k, new)}
    base = rates["transformers generate (num_return_sequences=4)"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


# ----------------------------------------------------------------------------- Score-DPO


def build_pairs(n: int) -> list[dict]:
    from scoreflow.workflow.static_baselines import baseline_workflow

    tok = load_tokenizer(QWEN_CODER)
    end = "</graph><|im_end|>"
    chosen, rejected = (baseline_workflow(kind, "math") + end for kind in ("medprompt", "cot_sc"))
    pairs = []
    for q in questions(n):
        prompt = tok.apply_chat_template(generator_prompt("math", q)) + RESPONSE_PREFIX
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "prompt_ids": tok.encode(prompt),
                      "chosen_ids": tok.encode(chosen), "rejected_ids": tok.encode(rejected)})
    return pairs


def child_ours(spec: dict) -> dict:
    from scoreflow.dpo.batch import PairExample
    from scoreflow.dpo.trainer import TrainConfig, train_dpo
    from scoreflow.lora import apply_lora

    model = load_model(spec["model_dir"], device="cpu")
    torch.manual_seed(0)
    apply_lora(model, r=8, alpha=16, dropout=0.01)
    pairs = [PairExample(tuple(p["prompt_ids"]), tuple(p["chosen_ids"]), tuple(p["rejected_ids"]), 1.0, 0.0)
             for p in spec["pairs"]]
    history = train_dpo(model, pairs, spec["out_dir"], TrainConfig(lr=1e-6, gradient_checkpointing=spec["gc"]),
                        progress=False)
    return {"steps": [m["seconds"] for m in history][1:], "loss": [m["loss"] for m in history]}


def child_trl(spec: dict) -> dict:
    import datasets
    import transformers
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tok = transformers.AutoTokenizer.from_pretrained(spec["model_dir"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    data = datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in spec["pairs"]])
    ends: list[float] = []

    class Stamps(transformers.TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    args = DPOConfig(output_dir=spec["out_dir"], loss_type=["sigmoid"], beta=0.1, learning_rate=1e-6,
                     per_device_train_batch_size=1, num_train_epochs=1, max_length=None,
                     precompute_ref_log_probs=True, gradient_checkpointing=spec["gc"], disable_dropout=False,
                     use_cpu=True, logging_strategy="no", save_strategy="no", report_to="none", seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Stamps()],
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.01, bias="none",
                                                target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out = trainer.train()
    return {"steps": [b - a for a, b in zip(ends, ends[1:])], "loss": [out.training_loss]}


def run_child(kind: str, spec: dict, tmp: Path) -> dict:
    spec_file = tmp / f"{kind}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "child", kind, str(spec_file)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dpo(n_pairs: int, gc: bool) -> None:
    pairs = build_pairs(n_pairs)
    lengths = [(len(p["prompt_ids"]), len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs]
    print(f"# {QWEN_CODER}, Score-DPO, CPU fp32, {torch.get_num_threads()} threads, {n_pairs} pairs "
          f"(prompt, chosen, rejected tokens: {lengths}), gradient checkpointing {'on' if gc else 'off'}")
    print("| trainer | s/pair (fastest) | (median) | peak RSS GiB | loss |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_qwen_") as tmp:
        for name, kind in (("ours (train_dpo, ref cached)", "ours"), ("TRL DPOTrainer + PEFT, ref precomputed", "trl")):
            spec = {"model_dir": str(resolve_model_dir(QWEN_CODER)), "pairs": pairs, "gc": gc,
                    "out_dir": str(Path(tmp) / kind)}
            r = run_child(kind, spec, Path(tmp))
            steps = sorted(r["steps"])
            print(f"| {name} | {steps[0]:.1f} | ({steps[len(steps) // 2]:.1f}) | {r['peak'] / GIB:.2f} | "
                  f"{', '.join(f'{x:.4f}' for x in r['loss'])} |", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        spec = json.loads(Path(sys.argv[3]).read_text())
        result = (child_ours if sys.argv[2] == "ours" else child_trl)(spec)
        result["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("generate").add_argument("--prompts", type=int, default=2)
    d = sub.add_parser("dpo")
    d.add_argument("--pairs", type=int, default=3)
    d.add_argument("--gc", action="store_true", help="gradient checkpointing on both sides")
    a = ap.parse_args()
    t = time.perf_counter()
    generate(a.prompts) if a.what == "generate" else dpo(a.pairs, a.gc)
    print(f"\n({(time.perf_counter() - t) / 60:.1f} min)")


if __name__ == "__main__":
    main()
