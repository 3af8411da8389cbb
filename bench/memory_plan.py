"""The memory plan (scoreflow/memory_plan.py) against the measured peak resident size of each
stage, for the embedded generators at the train preset's shapes: the longest prompt of the
preset's questions, k = 8 workflows of max_new_tokens = 384, LoRA r = 8 on q, v, one question
packed per Score-DPO pass, gradient checkpointing on. Each stage runs alone in a fresh process
(with freed memory returned to the system, as every command runs: scoreflow/heap.py), its
workflows at their longest so that the pass is the worst case:

    runtime              import torch and scoreflow, load the tokenizer; no weights
    executor on loopback the model served as train serves its executor, the cache written in full
    generation           the generator's engine: 4 prompts x 8 samples, the cache sized as train sizes it
                         and written in full (as when every workflow reaches max_new_tokens)
    reference log-probs  one packed question, no gradients, the adapter off
    Score-DPO step       the same question, forward, backward, AdamW step over the LoRA weights

    python bench/memory_plan.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]

Each stage also runs, right after, with glibc's own mmap threshold (what the process did before
heap.py): its peak and seconds side by side, interleaved, show what returning freed memory saves
and costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys
stage, name, P, k, N, heap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if heap == "on":
    from scoreflow.heap import return_freed_memory
    assert return_freed_memory()
import torch
from scoreflow.llama import load_model, load_tokenizer
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tok = load_tokenizer(name)
g = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(0, 1000, (n,), generator=g).tolist()
if stage == "executor":
    from scoreflow.engine.local import serve_locally
    from scoreflow.optimize.endpoint import EMBEDDED_BATCH, EMBEDDED_CONTEXT
    with serve_locally(name, max_batch=EMBEDDED_BATCH, max_seq_len=EMBEDDED_CONTEXT) as server:
        server.engine.cache.k.fill_(0.0), server.engine.cache.v.fill_(0.0)
elif stage != "runtime":
    from scoreflow.lora import apply_lora, disable_adapter
    model = apply_lora(load_model(name, device="cpu"), r=8, alpha=16, dropout=0.01)
if stage == "generation":
    from scoreflow.engine import Engine, SamplingParams
    from scoreflow.optimize.config import GENERATE_ROWS, KV_ROUND
    rows, shared = GENERATE_ROWS // k * k, ids(P - 100)
    engine = Engine(model.eval(), tok, max_batch=rows, max_seq_len=-(-(P + N) // KV_ROUND) * KV_ROUND)
    engine.generate([shared + ids(100) for _ in range(rows // k)], SamplingParams(n=k, temperature=0.7, max_tokens=4))
    engine.cache.k.fill_(0.0), engine.cache.v.fill_(0.0)  # every position written, as when all reach max_new_tokens
elif stage not in ("runtime", "executor"):
    from scoreflow.dpo.batch import QuestionExample, pack, response_logps
    unit = QuestionExample(tuple(ids(P)), tuple(tuple(ids(N)) for _ in range(k)), (1.0, 0.0) * (k // 2), ((0, 1),), (1.0,))
    if stage == "reference":
        with torch.no_grad(), disable_adapter(model):
            response_logps(model.eval(), pack([unit]))
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train().gradient_checkpointing = True
        response_logps(model, pack([unit])).sum().backward()
        optimizer.step()
print(json.dumps({"peak": peak()}))
"""
STAGES = {"runtime": "runtime", "generation": "generation", "reference": "reference log-probs",
          "dpo": "Score-DPO step", "executor": "executor on loopback"}


def preset_prompt_tokens(model: str) -> int:
    """The longest generator prompt among the train preset's questions (GSM8K, the first 4)."""
    from scoreflow.llama import load_tokenizer
    from scoreflow.optimize.config import EMBEDDED
    from scoreflow.optimize.generator import prompt_ids
    from scoreflow.tasks import load_task

    tok = load_tokenizer(model)
    task = load_task("gsm8k", "validate")
    return max(len(prompt_ids(tok, task.family, q.prompt)) for q in task.questions[: EMBEDDED.settings["limit"]])


def measure(stage: str, model: str, P: int, k: int, N: int, heap: str) -> tuple[float | None, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, stage, model, str(P), str(k), str(N), heap],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"# {stage} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None, time.perf_counter() - t
    return json.loads(proc.stdout.splitlines()[-1])["peak"], time.perf_counter() - t


def main() -> None:
    from scoreflow.llama.config import LlamaConfig
    from scoreflow.llama.registry import resolve_model_dir
    from scoreflow.memory_plan import GiB, Run, Shape, plan, runtime_cpu
    from scoreflow.optimize.config import GENERATE_ROWS, KV_ROUND
    from scoreflow.optimize.plan import executor_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct")
    a = ap.parse_args()
    from scoreflow.optimize.config import EMBEDDED

    k, N = EMBEDDED.settings["k"], EMBEDDED.settings["max_new_tokens"]  # the train preset's (8, 384)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU fp32")
    print("| model | stage | predicted, GB | measured peak RSS, GB | measured / predicted | seconds "
          "| glibc's default: peak RSS, GB | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        P = preset_prompt_tokens(model)
        shape = Shape.of(LlamaConfig.from_json(resolve_model_dir(model)))
        stages = {s.name: s.total for s in plan(shape, Run(k, N, P, 8, "question", True, GENERATE_ROWS, KV_ROUND))}
        stages["runtime"] = runtime_cpu(shape)
        stages["executor on loopback"] = runtime_cpu(shape) + executor_bytes(model, "cpu")
        for key, label in STAGES.items():
            peak, seconds = measure(key, model, P, k, N, "on")
            default, default_seconds = measure(key, model, P, k, N, "off")
            predicted = stages[label]
            got, other = ("failed" if b is None else f"{b / GiB:.2f}" for b in (peak, default))
            ratio = "-" if peak is None else f"{peak / predicted:.2f}"
            print(f"| {model} (prompt {P}) | {label} | {predicted / GiB:.2f} | {got} | {ratio} | {seconds:.0f} | "
                  f"{other} | {default_seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
