"""bench/gpu_check.py, the script a session with a lent GPU runs, runs on CPU with its tiny shape
and prints every row of its table, so it cannot rot between GPU sessions."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("decode, batch 1, ms/step", "decode, batch 32, ms/step", "decode with CUDA-graph capture, batch 1, ms/step",
                 "decode with CUDA-graph capture, batch 32, ms/step"):
        assert name in rows, proc.stdout
    step = next(line for key, line in rows.items() if key.startswith("Score-DPO step"))
    assert re.search(r"\| \d+\.\d{3} \| \d+\.\d{3} \| \d+\.\d\dx \|", step), step  # ours and TRL both timed
    assert re.search(r"decode floor \d+\.\d\d ms/step", proc.stdout)
    gap = float(re.search(r"max \|logits difference\| / max \|logits\| = (\S+)", proc.stdout).group(1))
    assert gap < 1e-4  # fp32 on CPU: ours and transformers compute the same logits from the same weights
