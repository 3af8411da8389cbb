"""First-use conversion of the embedded GGUF models (`convert_gguf`): gguf's GGUFReader over the
np.memmap it builds itself, against the same reader over a plain ndarray view of that map (what
`scoreflow.llama.gguf.gguf_reader` gives). Each conversion runs in a fresh process; the two
readers alternate, and their outputs are compared byte for byte.

    python bench/bench_convert.py [--rounds 2]

Only the conversion is timed: for Qwen, joining its six package parts into one GGUF (and the
SHA-256 check) happens once before, outside the timings.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scoreflow.llama.registry import DEFAULT_MODEL, QWEN_CODER, embedded_gguf

CHILD = r"""
import json, sys, time
from gguf.gguf_reader import GGUFReader
from scoreflow.llama import gguf as conversion
reader, source, out = sys.argv[1:4]
if reader == "memmap":
    conversion.gguf_reader = GGUFReader  # gguf's own: slices go through np.memmap
t = time.perf_counter()
conversion.convert_gguf(source, out)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""
READERS = ("memmap", "array view")
FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")


def convert(reader: str, source: Path, out: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, reader, str(source), str(out)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="conversions per reader and model (default: 2)")
    rounds = ap.parse_args().rounds
    start = time.time()
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| model | GGUF | gguf's memmap reader, s | array view, s | speed-up | outputs identical |")
    print("|---|---|---|---|---|---|")
    for name in (DEFAULT_MODEL, QWEN_CODER):
        source = embedded_gguf(name)
        times: dict[str, list[float]] = {r: [] for r in READERS}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(rounds):
                for reader in (READERS if i % 2 == 0 else READERS[::-1]):
                    times[reader].append(convert(reader, source, Path(tmp) / reader))
            same = all(filecmp.cmp(Path(tmp) / READERS[0] / f, Path(tmp) / READERS[1] / f, shallow=False)
                       for f in FILES)
        best = {r: min(t) for r, t in times.items()}
        shown = {r: " / ".join(f"{t:.1f}" for t in times[r]) for r in READERS}
        print(f"| {name} | {source.stat().st_size / 2**20:.0f} MiB | {shown['memmap']} | {shown['array view']} | "
              f"{best['memmap'] / best['array view']:.2f}x (best of each) | {'yes' if same else 'NO'} |")
    print(f"\nwall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
