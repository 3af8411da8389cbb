"""The packages import one another in one direction only: the import graph of scoreflow/,
read from the source with `ast` (imports inside functions and under TYPE_CHECKING
count too, and a package's `lazy_exports` map counts as importing each module it names), has no
cycle; and the commands check their flags before they import torch."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in (REPO / "scoreflow").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports. `from a.b import c` counts a.b.c when it is a module,
    else a.b. Importing a.b.c also runs a/__init__ and a/b/__init__, unless `name` is inside them."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            homes = node.args[1]  # {"submodule": (names, ...), ...}: imported on first use, but imported
            targets |= {f"{name}.{key.value}" for key in homes.keys}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for k in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:k])
            if ancestor in known and (k == len(parts) or not (name + ".").startswith(ancestor + ".")):
                edges.add(ancestor)
    return edges - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_graph_sees_real_edges_and_would_catch_a_cycle():
    g = graph()
    assert "scoreflow.executor" in g["scoreflow.magicore.workflow_operator"]  # a from-package import
    assert "scoreflow.engine.protocol" in g["scoreflow.engine.server"]  # a relative import
    assert "scoreflow.engine" in g["scoreflow.optimize.endpoint"]  # a.b.c runs a/b/__init__ first
    assert "scoreflow.engine" not in g["scoreflow.engine.server"]  # ... unless inside a/b
    assert "scoreflow.llama.load" in g["scoreflow.llama"]  # a lazy export
    g["scoreflow.engine.protocol"].add("scoreflow.engine.server")
    assert cycles(g) == [["scoreflow.engine.protocol", "scoreflow.engine.server"]]


HELPERS = {"cli", "rundir", "progress", "gather", "lazy", "heap"}  # small top-level modules any room may import


def room(module: str) -> str:
    """scoreflow.engine.kv_cache -> engine; scoreflow.kernels.attention -> kernels; scoreflow -> scoreflow."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def rooms() -> dict[str, set[str]]:
    """The import graph between rooms: scoreflow's subpackages and top-level modules."""
    found: dict[str, set[str]] = {}
    for module, targets in graph().items():
        found.setdefault(room(module), set()).update(room(t) for t in targets)
    return {r: targets - {r, "scoreflow"} for r, targets in found.items() if r != "scoreflow"}


def documented_arrows() -> dict[str, set[str]]:
    """The layout page's "Package dependencies" block: `  room -> a, b` per line."""
    text = (Path(__file__).resolve().parents[2] / "scoreflow" / "docs" / "layout.md").read_text()
    block = text.split("Package dependencies")[1].split("```")[1]
    arrows = {}
    for line in block.strip().splitlines():
        name, _, targets = line.partition("->")
        arrows[name.strip()] = {t.strip() for t in targets.split(",") if t.strip() not in ("", "nothing")}
    return arrows


def test_rooms_import_one_another_in_one_direction():
    assert cycles(rooms()) == []


def test_the_workflow_runtime_imports_no_magicore():
    """workflow/ is the generic runtime: MagicoreRefine is a plugin it names only as text
    (workflow/host.py PLUGIN_MODULES), never an import, not even inside a function."""
    g = graph()
    assert {(m, t) for m, targets in g.items() if room(m) == "workflow" for t in targets if room(t) == "magicore"} == set()


def test_magicore_knows_workflows_only_in_its_operator_plugin():
    """MAgICoRE is a library that knows nothing of ScoreFlow, but for workflow_operator.py (the
    MagicoreRefine plugin), which no module imports: the runtime loads it by name."""
    g = graph()
    plugin = "scoreflow.magicore.workflow_operator"
    assert {m for m, targets in g.items() if room(m) == "magicore" and any(room(t) == "workflow" for t in targets)} \
        == {plugin}
    assert [m for m, targets in g.items() if plugin in targets] == []


def test_the_documented_arrows_are_the_import_graph():
    actual = {r: targets - HELPERS for r, targets in rooms().items() if r not in HELPERS}
    assert documented_arrows() == actual
    assert all(rooms()[h] <= HELPERS for h in HELPERS)  # the helpers import only one another


def test_commands_check_their_flags_before_importing_torch():
    """Importing a command's module (what a typo in its flags costs) does not import torch (~2 s):
    the packages' exports are lazy and the commands import the heavy parts after their checks."""
    commands = ["scoreflow.train", "scoreflow.evaluate", "scoreflow.generate", "scoreflow.magicore.__main__",
                "scoreflow.aflow", "scoreflow.adas"]
    code = f"import sys\nfor m in {commands}: __import__(m)\nprint(sorted(m for m in sys.modules if m.startswith('torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
