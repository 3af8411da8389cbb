"""What a user's fresh clone needs: the main job runs from any folder with nothing beside the
repository, the benchmark data travels inside the wheel, and nothing points at a development
checkout's neighbours."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DATA = REPO / "scoreflow" / "data"


@pytest.mark.slow
def test_main_job_runs_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SCOREFLOW_DATA"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "scoreflow.train", "--limit", "1", "--k", "2", "--iterations", "1",
                           "--runs", "1", "--pairs", "2", "--max-new-tokens", "24", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| iter | mean workflow score |" in proc.stdout  # the per-iteration table
    config = json.loads((out / "config.json").read_text())
    assert (config["task"], config["k"], config["data_dir"]) == ("gsm8k", 2, None)  # the packaged data
    assert (config["generator"], config["dpo"]["dpo_grouping"]) == ("qwen2.5-coder-0.5b-instruct", "question")
    workflows = (out / "iter_0" / "workflows.jsonl").read_text().splitlines()
    assert len(workflows) == 2 and (out / "summary.jsonl").is_file()


def test_wheel_carries_the_benchmark_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("scoreflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"scoreflow/data/{p.relative_to(PACKAGE_DATA).as_posix()}" for p in PACKAGE_DATA.rglob("*")
               if p.is_file()}
    assert len(shipped) == 19 and shipped <= names  # 13 AFlow files, 5 MAgICoRE sets, PROVENANCE.md


def test_nothing_points_at_a_development_checkout():
    neighbour = re.compile(r"\.\./" + "shared|" + '"shared" ' + '/ "datasets"')  # split: this file must not match
    files = [p for top in ("scoreflow", "kernels", "tests", "bench") for p in (REPO / top).rglob("*")
             if p.suffix in (".py", ".md")] + [REPO / "README.md", REPO / "setup.py"]
    assert not [str(p.relative_to(REPO)) for p in files if neighbour.search(p.read_text())]
