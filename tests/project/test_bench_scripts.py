"""The benchmark scripts and the results they back stay consistent with the code and docs.

Every script in bench/ and bench/experiments/ imports what exists: a rename in scoreflow/ that a
benchmark still uses the old way fails here, not in the middle of the next measurement session,
and so does a script importing a script of the other folder (each runs with its own folder first
on sys.path). Every citation of a section of bench/RESULTS.md or bench/HISTORY.md in scoreflow/,
bench/, tests/ and README.md (the file name, a comma, then the section name in double quotes)
names a section that exists, so renaming a section without its citations fails here too.
"""

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SCRIPTS = sorted([*BENCH.glob("*.py"), *(BENCH / "experiments").glob("*.py")])
RESULTS, HISTORY = BENCH / "RESULTS.md", BENCH / "HISTORY.md"


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each absolute import: `import a.b` -> ("a.b", None), `from a import b` -> ("a", "b")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
    return found


def defined_names(path: Path) -> set[str]:
    """The names a module defines at its top level (what `from module import name` may take)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_bench_script_imports_resolve(script):
    elsewhere = {p.stem: p for p in SCRIPTS if p.parent != script.parent}
    for module, name in imports(script):
        top = module.split(".")[0]
        if top == "scoreflow":
            mod = importlib.import_module(module)
            if name is not None and not hasattr(mod, name):
                importlib.import_module(f"{module}.{name}")  # a submodule, or ModuleNotFoundError names it
        elif (script.parent / f"{top}.py").is_file():  # a script of the same folder: sys.path[0] when it runs
            assert name is None or name in defined_names(script.parent / f"{top}.py"), \
                f"{script.name}: {top}.py defines no {name}"
        elif top in elsewhere:
            pytest.fail(f"{script.name} imports {elsewhere[top].relative_to(REPO)}, a script of another folder, "
                        f"which is not on its sys.path: copy what it needs, or keep both in one folder")
        elif module_of_tests := next((REPO / "tests").rglob(f"{top}.py"), None):  # the script puts tests/ on sys.path
            where = module_of_tests.relative_to(REPO)
            assert '"tests"' in script.read_text(), f"{script.name} imports {where} without tests/ on sys.path"
            assert name is None or name in defined_names(module_of_tests), f"{script.name}: {where} defines no {name}"
        else:
            assert top in sys.stdlib_module_names or importlib.util.find_spec(top), f"{script.name}: no module {top}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(BENCH).as_posix())
def test_bench_script_paths_name_the_repository_root(script):
    """`Path(__file__).resolve().parents[N]` in a script means the repository root; a move to
    another folder depth must change N."""
    for n in re.findall(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]", script.read_text()):
        assert script.resolve().parents[int(n)] == REPO, f"{script.name}: parents[{n}] is not the repository root"


def test_the_check_sees_a_stale_import(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("from scoreflow.engine import generate\n")
    with pytest.raises(ModuleNotFoundError):
        test_bench_script_imports_resolve(stale)


def test_the_check_sees_an_import_across_folders(tmp_path):
    across = tmp_path / "across.py"
    across.write_text("from bench_generate import prompts\n")
    with pytest.raises(pytest.fail.Exception, match="another folder"):
        test_bench_script_imports_resolve(across)


# --- citations of results sections ------------------------------------------------------------

QUOTED = r'"[^"]+"'
CITATION = re.compile(rf"\b(RESULTS|HISTORY)\.md`?,\s*({QUOTED}(?:\s*[,;]\s*{QUOTED})*)")


def headings(path: Path, levels: tuple[str, ...]) -> list[str]:
    return [line.split(" ", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith(levels)]


def citations(text: str) -> list[tuple[str, str]]:
    """(file, section) for each citation: RESULTS.md or HISTORY.md, a comma, then one or more
    quoted section names (a name may be the beginning of a long heading). Comment markers at line
    starts are dropped first, so a citation wrapped across comment lines is read whole."""
    text = re.sub(r"\n[ \t]*#[ \t]?", "\n", text)
    return [(f"{m.group(1)}.md", " ".join(q.split()))
            for m in CITATION.finditer(text) for q in re.findall(r'"([^"]+)"', m.group(2))]


def unresolved(text: str, results: list[str], history: list[str]) -> list[tuple[str, str]]:
    sections = {"RESULTS.md": results, "HISTORY.md": history}
    return [(f, s) for f, s in citations(text) if not any(h.startswith(s) for h in sections[f])]


def citing_files() -> list[Path]:
    files = [*(REPO / "scoreflow").rglob("*.py"), *(REPO / "scoreflow").rglob("*.md"), *BENCH.rglob("*.py"),
             *BENCH.rglob("*.md"), *(REPO / "tests").rglob("*.py"), REPO / "README.md"]
    return sorted(p for p in files if p not in (HISTORY, Path(__file__).resolve()) and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", citing_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_citations_name_existing_sections(path):
    results, history = headings(RESULTS, ("## ",)), headings(HISTORY, ("## ", "### "))
    assert unresolved(path.read_text(), results, history) == [], \
        f"{path.relative_to(REPO)} cites sections that bench/RESULTS.md (## headings) or bench/HISTORY.md do not have"


def test_citations_are_found_and_a_renamed_section_fails():
    text = ('cost (`bench/RESULTS.md`,\n"Server soak") and (bench/RESULTS.md, "Engine decode speed");\n'
            '# see bench/RESULTS.md,\n# "Suite time"\nHistory: HISTORY.md, "Generation", "Engine speed, part 3"\n')
    assert citations(text) == [("RESULTS.md", "Server soak"), ("RESULTS.md", "Engine decode speed"),
                               ("RESULTS.md", "Suite time"), ("HISTORY.md", "Generation"),
                               ("HISTORY.md", "Engine speed, part 3")]
    results = ["Server soak", "Engine decode speed", "Suite time"]
    history = ["Generation — `python bench/bench_generate.py`", "Engine speed, part 3: prepacked weights"]
    assert unresolved(text, results, history) == []
    assert unresolved(text, ["Server soak", "Engine speed", "Suite time"], history) == \
        [("RESULTS.md", "Engine decode speed")]
    assert unresolved(text, results, history[:1]) == [("HISTORY.md", "Engine speed, part 3")]


def test_results_sections_are_stable_names_with_command_date_and_history():
    text = RESULTS.read_text()
    names = headings(RESULTS, ("## ",))
    assert len(names) == len(set(names)) and len(names) >= 10
    for name in names:
        assert not re.search(r"\b20\d\d-\d\d|#\d|\bsession\b|\bpart \d", name), f"a dated or history label: {name}"
    history = headings(HISTORY, ("## ", "### "))
    for name, body in zip(names, re.split(r"^## .*$", text, flags=re.M)[1:]):
        assert re.search(r"^- Command", body, re.M) and re.search(r"^- Date", body, re.M), name
        pointer = re.search(r"^History: HISTORY\.md, .*?(?:\n\n|\Z)", body, re.M | re.S)
        assert pointer, f"{name}: no 'History: HISTORY.md, ...' line"
        for cited in re.findall(r'"([^"]+)"', pointer.group(0)):
            assert any(h.startswith(" ".join(cited.split())) for h in history), f"{name}: no history section {cited}"
