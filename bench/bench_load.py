"""Load time and peak memory of the default model: ours vs transformers, each in a fresh process.

    python bench/bench_load.py [--model NAME_OR_DIR]   # default: the embedded default model

Peak RSS is the process high-water mark (getrusage); "load delta" subtracts the RSS measured
after the imports, so it counts what loading itself costs against the fp32 weight bytes.
transformers memory-maps the file, so its pages count only once touched: the last column is
the peak after one forward pass, when every weight has been read.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
import torch
kind, path = sys.argv[1], sys.argv[2]
if kind == "transformers":
    import transformers
    transformers.logging.set_verbosity_error()
else:
    from scoreflow.llama import load_model
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss()
t = time.perf_counter()
if kind == "transformers":
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
else:
    model = load_model(path, device="cpu")
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.inference_mode():
    model(torch.tensor([[1, 2, 3]]))
peak_fwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
print(json.dumps({"seconds": dt, "peak": peak, "peak_fwd": peak_fwd, "base": base, "weights": weights}))
"""


def measure(kind: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from scoreflow.llama.registry import DEFAULT_MODEL, resolve_model_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL, help="known model name or HF-format directory")
    model = ap.parse_args().model
    path = str(resolve_model_dir(model))  # converted once, outside the timing
    rows = {kind: min((measure(kind, path) for _ in range(3)), key=lambda r: r["seconds"])
            for kind in ("scoreflow", "transformers")}
    gib = 1024**3
    print(f"# {model} (fp32 safetensors, {rows['scoreflow']['weights'] / gib:.2f} GiB of weights), "
          f"CPU, best of 3 fresh processes; {platform.machine()}, Python {platform.python_version()}")
    print("| loader | load s | peak RSS GiB | load delta GiB | delta / weight bytes | peak RSS after 1st forward GiB |")
    print("|---|---|---|---|---|---|")
    for kind, r in rows.items():
        delta = r["peak"] - r["base"]
        print(f"| {kind} | {r['seconds']:.2f} | {r['peak'] / gib:.2f} | {delta / gib:.2f} | "
              f"{delta / r['weights']:.2f} | {r['peak_fwd'] / gib:.2f} |")


if __name__ == "__main__":
    main()
