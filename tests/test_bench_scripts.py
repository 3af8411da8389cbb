"""Every bench/ script imports what exists: a rename in scoreflow/ that a benchmark still uses
the old way fails here, not in the middle of the next measurement session."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def our_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each `import scoreflow...` / `from scoreflow... import name`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scoreflow":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "scoreflow"]
    return found


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_script_imports_resolve(script):
    for module, name in our_imports(script):
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # a submodule, or ModuleNotFoundError names it


def test_the_check_sees_a_stale_import(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("from scoreflow.engine import generate\n")
    with pytest.raises(ModuleNotFoundError):
        test_bench_script_imports_resolve(stale)
