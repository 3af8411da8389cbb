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

REPO = Path(__file__).resolve().parents[2]
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
    files = [p for top in ("scoreflow", "tests", "bench") for p in (REPO / top).rglob("*")
             if p.suffix in (".py", ".md")] + [REPO / "README.md", REPO / "setup.py"]
    assert not [str(p.relative_to(REPO)) for p in files if neighbour.search(p.read_text())]


def readme_commands() -> list[str]:
    """The two set-up commands at the top of the README: the main job, then the tests."""
    block = (REPO / "README.md").read_text().split("```bash\n")[1].split("```")[0]
    return block.strip().splitlines()


def test_ci_runs_the_readmes_test_command_with_the_pinned_oracles():
    main_job, tests = readme_commands()
    assert main_job.endswith("python -m scoreflow.train") and tests.endswith("python -m pytest -q")
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()
    assert 'pip install -e ".[test]" -c tests/constraints.txt' in tests


def test_readme_names_the_pins_the_constraints_file_holds():
    pins = dict(line.split("==") for line in (REPO / "tests" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    text = " ".join((REPO / "README.md").read_text().split("tests/constraints.txt`:")[1].split(")")[0].split())
    named = dict(re.findall(r"([A-Za-z][\w.-]*) (\d[\w.]*)", text))
    assert {"transformers", "peft", "trl", "openai"} <= set(named)
    assert {name: version for name, version in named.items()
            if pins.get(name.lower().replace("_", "-")) != version} == {}
