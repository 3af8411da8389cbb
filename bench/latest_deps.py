"""Do the newest releases of our test oracles still pass? An upstream release once broke the
README's test command overnight (transformers 5.25 began to import Hugging Face's `kernels`);
this finds the next one on purpose, before a user does.

    python bench/latest_deps.py                     # RESULTS.md, "Test oracles at their newest"
    python bench/latest_deps.py --keep /tmp/latest  # keep the venv for a closer look

It makes a new venv that sees this interpreter's packages (torch, the embedded model packages),
upgrades every distribution that tests/constraints.txt pins to its newest release there (torch
held at this interpreter's version, so no CUDA build is pulled), and runs the parity and
interop tests: every test file that names an oracle. It prints, per distribution, the pinned
and the newest version, then pytest's summary. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "tests" / "constraints.txt"
ORACLE_MODULES = ("transformers", "peft", "trl", "openai", "accelerate", "gguf", "huggingface_hub", "kernels")


def pinned() -> dict[str, str]:
    lines = (line.strip() for line in CONSTRAINTS.read_text().splitlines())
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def interop_tests() -> list[str]:
    """Test files that import an oracle or use one through a fixture (named *oracle*)."""
    names = re.compile(r"\b(" + "|".join(ORACLE_MODULES) + r"|\w*oracle\w*)\b")
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if names.search(p.read_text()))


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, **kwargs)


def main(keep: str | None) -> int:
    venv = Path(keep or tempfile.mkdtemp(prefix="scoreflow_latest_"))
    try:
        run(sys.executable, "-m", "venv", "--system-site-packages", str(venv), check=True)
        python = str(venv / "bin" / "python")
        hold = venv / "hold.txt"
        hold.write_text(f"torch=={importlib.metadata.version('torch')}\n")
        upgrade = run(python, "-m", "pip", "install", "-q", "--upgrade", "-c", str(hold), *pinned())
        if upgrade.returncode != 0:
            print("the newest releases do not install together: see pip's message above")
            return upgrade.returncode
        query = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
        newest = json.loads(run(python, "-c", query, *pinned(), capture_output=True, text=True, check=True).stdout)
        moved = {name: (version, newest[name]) for name, version in pinned().items() if newest[name] != version}
        print("\n| distribution | pinned | newest |\n|---|---|---|")
        for name, (old, new) in sorted(moved.items()):
            print(f"| {name} | {old} | {new} |")
        print(f"({len(pinned()) - len(moved)} more at their pinned version)\n")
        return run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *interop_tests(), cwd=REPO).returncode
    finally:
        if keep is None:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="make the venv here and keep it")
    sys.exit(main(parser.parse_args().keep))
