"""Peak memory of the embedded preset's largest Score-DPO pass: one question packed as a
1,000-token prompt and 8 workflows of 384 tokens (the preset's max_new_tokens), on the default
generator with LoRA on q,v, with and without gradient checkpointing. Each variant is one forward
and backward in a fresh process; a variant the kernel kills for memory is reported as such.

    python bench/dpo_memory.py [--model qwen2.5-coder-0.5b-instruct]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from scoreflow.llama.registry import DEFAULT_GENERATOR

CHILD = r"""
import json, resource, sys, time
import torch
from scoreflow.dpo.batch import QuestionExample, pack, response_logps
from scoreflow.llama import load_model
from scoreflow.lora import apply_lora
model = apply_lora(load_model(sys.argv[1], device="cpu")).train()
model.gradient_checkpointing = sys.argv[2] == "on"
g = torch.Generator().manual_seed(0)
ids = lambda n: tuple(torch.randint(0, 1000, (n,), generator=g).tolist())
unit = QuestionExample(ids(1000), tuple(ids(384) for _ in range(8)), (1.0, 0.0) * 4, ((0, 1),), (1.0,))
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
loaded = peak()
t = time.perf_counter()
response_logps(model, pack([unit])).sum().backward()
print(json.dumps({"loaded_gb": loaded, "peak_gb": peak(), "seconds": time.perf_counter() - t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_GENERATOR, help="a known model name or an HF-format directory")
    model = ap.parse_args().model
    print(f"# {model}, one question: 1,000 + 8 x 384 tokens packed, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| gradient checkpointing | peak RSS after loading, GB | peak RSS, GB | forward + backward, s |")
    print("|---|---|---|---|")
    for setting in ("on", "off"):
        proc = subprocess.run([sys.executable, "-c", CHILD, model, setting], capture_output=True, text=True)
        if proc.returncode != 0:
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else proc.stderr.strip()[-200:]
            print(f"| {setting} | - | {why} | - |")
            continue
        r = json.loads(proc.stdout.splitlines()[-1])
        print(f"| {setting} | {r['loaded_gb']:.2f} | {r['peak_gb']:.2f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
