"""bench/gpu_check.py, the script a session with a lent GPU runs, runs on CPU with its tiny shapes
(--cpu-smoke) and prints every row of its two tables, so it cannot rot between GPU sessions: the
training rows run the commands' own trainer (train_dpo), grouped and per pair, with and without
checkpointing, through the same functions CUDA runs, the device a parameter."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=300)
    assert time.monotonic() - start < 60
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("decode, batch 1, ms/step", "decode, batch 32, ms/step", "decode with CUDA-graph capture, batch 1, ms/step",
                 "decode with CUDA-graph capture, batch 32, ms/step"):
        assert name in rows, proc.stdout
    step = next(line for key, line in rows.items() if key.startswith("Score-DPO step"))
    assert re.search(r"\| \d+\.\d{3} \| \d+\.\d{3} \| \d+\.\d\dx \|", step), step  # ours and TRL both timed
    assert re.search(r"decode floor \d+\.\d\d ms/step", proc.stdout)
    for setting in ("pair, checkpointing off", "pair, checkpointing on", "question, checkpointing off",
                    "question, checkpointing on"):
        steps = 2 if setting.startswith("pair") else 1  # 4 responses: 2 pairs, or 1 question
        assert re.search(rf"\| {setting} \| {steps} \| \d+\.\d{{3}} \| \d+\.\d\d \| - \| - \|", proc.stdout), proc.stdout
    gap = float(re.search(r"max \|logits difference\| / max \|logits\| = (\S+)", proc.stdout).group(1))
    assert gap < 1e-4  # fp32 on CPU: ours and transformers compute the same logits from the same weights
