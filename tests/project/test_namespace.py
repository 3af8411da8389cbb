"""Our import names collide with nobody's. A top-level package named `kernels` once broke
transformers for every user: Hugging Face's `kernels` distribution, which transformers imports,
owns that name, and a folder of ours with the same name won from wherever it was on sys.path.

So the repository installs exactly one top-level name, `scoreflow`, no other installed
distribution provides it, and scoreflow imports side by side with the oracles (transformers,
peft, trl) in either order, from the repository root (where `python -m pytest` and `python -c`
put the root first on sys.path) and from any other folder."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def our_top_level_names() -> set[str]:
    """What we put on the import path: the installed distribution's top-level names, and every
    package folder or module at the repository root (importable from there as it stands)."""
    installed = importlib.metadata.distribution("scoreflow").read_text("top_level.txt") or ""
    at_root = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    at_root |= {p.stem for p in REPO.glob("*.py") if p.name != "setup.py"}
    return set(installed.split()) | at_root


def test_one_top_level_name_that_no_other_distribution_provides():
    names = our_top_level_names()
    owners = importlib.metadata.packages_distributions()
    others = {name: sorted(set(owners.get(name, [])) - {"scoreflow"}) for name in names}
    assert {name: dists for name, dists in others.items() if dists} == {}
    assert names == {"scoreflow"}


EVERY_MODULE = """
import pkgutil, scoreflow
for info in pkgutil.walk_packages(scoreflow.__path__, "scoreflow."):
    if not info.name.endswith("__main__"):
        __import__(info.name)
"""
ORACLES = """
import transformers, peft, trl
from transformers import AutoModelForCausalLM, LlamaConfig
AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2))
"""
CHECK = f"""
import importlib.util, pathlib, scoreflow.kernels.attention as ours
repo = pathlib.Path({str(REPO)!r})
assert pathlib.Path(ours.__file__).is_relative_to(repo / "scoreflow"), ours.__file__
theirs = importlib.util.find_spec("kernels")  # Hugging Face's, when installed: never a folder of ours
assert theirs is None or not pathlib.Path(theirs.origin or "/").is_relative_to(repo), theirs
print("ok")
"""


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_scoreflow_then_the_oracles_from_the_repository_root():
    proc = run_python(EVERY_MODULE + ORACLES + CHECK, REPO)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_the_oracles_then_scoreflow_from_another_folder(tmp_path):
    proc = run_python(ORACLES + EVERY_MODULE + CHECK, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
