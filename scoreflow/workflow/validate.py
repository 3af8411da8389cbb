"""Static checks on generated workflow code, and the instrumentation that bounds its run.

`validate_workflow(code, family)` lists what is wrong with a workflow (empty: acceptable):
its shape (PAPERS.md §S1: `class Workflow` with `__init__(self, config, problem)` and
`async def run_workflow(self)`), the operators it builds (only the family's, PAPERS.md §S2), the
forbidden snippets (PAPERS.md §S3), a size limit, and everything that could reach outside the
restricted namespace the runtime gives it:

- imports; names with a double underscore (`__import__`, `__builtins__`), however bound
  (a parameter named like the injected tick would shadow it); attributes with a leading
  underscore (dunders and our private fields, e.g. the config's `_ctx`);
- the introspection attributes of frames, coroutines, generators and tracebacks
  (`cr_frame.f_globals` reaches a module's globals without a single underscore), and
  driving a coroutine by hand (`self.custom(...).send(None)` returns the asyncio future
  the operator waits on, whose `get_loop()` could start processes);
- `str.format` / `format_map` (their fields read attributes that the AST cannot see);
- strings containing "__" (subscripting a leaked dict with "__import__");
- `match` statements (class patterns read attributes by name);
- names of dangerous builtins (exec, eval, compile, open, getattr, ...), even though the
  namespace does not hold them, and of BaseException and its non-Exception subclasses;
- bare `except:` and `return`/`break`/`continue` inside `finally` (either would swallow
  the runtime's abort), `**` and `<<` (one operation can build a number that takes minutes
  or gigabytes), decorators, base classes, dunder methods other than `__init__`;
- state a run could share with other runs: attribute assignment to anything but
  `self.<name>`, `self` bound other than as the first parameter of a method (`self =
  operator.Custom` would make `self.x = ...` change an operator class), and a class of the
  workflow used other than by calling it (`Workflow.method(operator.Custom)` passes a class
  as `self`). Each run also gets fresh operator classes in a fresh process (stubs.py).

Code nested too deeply for the checks themselves is rejected as such, not raised.

Loops, `while True` included, are allowed: `instrument` puts a tick call at every loop
iteration, function entry and comprehension element, and the tick ends the run when the
time limit or the loop-step budget is spent (context.RunLimits.tick).
"""

from __future__ import annotations

import ast
import difflib
import re

from scoreflow.workflow.prompts import FAMILY_OPERATORS, template_workflow

MAX_WORKFLOW_CHARS = 20_000
MAX_PROBLEMS = 20
TICK_NAME = "__sf_tick__"  # injected after validation; user code cannot name it (double underscore)

DENIED_NAMES = frozenset({
    "exec", "eval", "compile", "open", "getattr", "setattr", "delattr", "hasattr", "globals", "locals",
    "vars", "dir", "breakpoint", "input", "type", "object", "super", "memoryview", "help", "exit", "quit",
    "classmethod", "staticmethod", "property",
    "BaseException", "BaseExceptionGroup", "GeneratorExit", "KeyboardInterrupt", "SystemExit", "CancelledError",
})
DENIED_ATTRIBUTES = frozenset({"format", "format_map", "mro", "send", "throw", "asend", "athrow", "get_loop"})
DENIED_ATTRIBUTE_PREFIXES = ("_", "cr_", "gi_", "ag_", "f_", "tb_", "co_")
_TOP_LEVEL = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign, ast.AnnAssign)
_HUGE_OPS = {ast.Pow: "**", ast.LShift: "<<"}

# PAPERS.md §S3's validity knobs.
# difflib ratio against the template at or above which a workflow counts as "near the
# template" and is dropped from pairs (ref); None: the check is off for that task.
SIMILARITY_THRESHOLDS: dict[str, float | None] = {
    "math": 0.75, "gsm8k": 0.8, "drop": 0.75, "hotpotqa": 0.75, "humaneval": None, "mbpp": None,
}
# Text a workflow may not contain (ref): both turn free LLM text into brittle structure.
# The validator matches `int(` as a whole word (so `print(` is fine) and either quote style.
FORBIDDEN_SNIPPETS: tuple[str, ...] = (".split(' ')", "int(")
TIME_LIMITS_S: dict[str, float] = {"math": 120.0, "qa": 120.0, "code": 240.0}  # per run (ref)


def validate_workflow(code: str, family: str) -> list[str]:
    """Problems with `code` as a workflow for `family` ("math", "qa", "code"); [] when it
    may run. Problems name the line they were found on."""
    if family not in FAMILY_OPERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILY_OPERATORS)}")
    if len(code) > MAX_WORKFLOW_CHARS:
        return [f"the workflow has {len(code)} characters; the limit is {MAX_WORKFLOW_CHARS}"]
    problems = [f"contains the forbidden snippet {s!r}" for s in FORBIDDEN_SNIPPETS if _contains_snippet(code, s)]
    try:
        tree = ast.parse(code)
        problems += _shape_problems(tree)
        checker = _Checker(FAMILY_OPERATORS[family], _class_names(tree))
        checker.visit(tree)
        problems += checker.problems
    except SyntaxError as e:
        problems.append(f"line {e.lineno}: syntax error: {e.msg}")
    except (RecursionError, MemoryError):
        problems.append("the code is nested too deeply to check")
    return list(dict.fromkeys(problems))[:MAX_PROBLEMS]


def _class_names(tree: ast.Module) -> frozenset[str]:
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef))


def _contains_snippet(code: str, snippet: str) -> bool:
    """Quote-insensitive match; a snippet starting with a name character matches only at a
    word start, so `int(` is caught and `print(` is not."""
    code, snippet = code.replace('"', "'"), snippet.replace('"', "'")
    boundary = r"(?<![\w.])" if snippet[0].isidentifier() else ""
    return re.search(boundary + re.escape(snippet), code) is not None


def _shape_problems(tree: ast.Module) -> list[str]:
    problems = [f"line {node.lineno}: only classes, functions and assignments may appear at the top level"
                for node in tree.body if not isinstance(node, _TOP_LEVEL) and not _is_docstring(node)]
    workflow = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Workflow"), None)
    if workflow is None:
        return [*problems, "no top-level `class Workflow`"]
    methods = {n.name: n for n in workflow.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    init, run = methods.get("__init__"), methods.get("run_workflow")
    if not isinstance(init, ast.FunctionDef) or not _takes_exactly(init, 3):
        problems.append("Workflow must define `def __init__(self, config, problem)`")
    if run is None:
        problems.append("Workflow must define `async def run_workflow(self)`")
    elif not isinstance(run, ast.AsyncFunctionDef) or not _takes_exactly(run, 1):
        problems.append(f"line {run.lineno}: run_workflow must be `async def run_workflow(self)`")
    return problems


NO_OPERATOR_CALL = "calls no operator: the problem reaches the executor only through operators"


def calls_an_operator(code: str) -> bool:
    """PAPERS.md §S3's "no operator call" test, statically: some method of Workflow calls
    `self.<name>(...)` where `self.<name> = operator.X(config)` (or calls `operator.X(config)(...)`
    directly). A validity rule of the optimisation loop, not a safety rule: run_workflow runs
    such code. Unparsable code: False."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    workflow = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Workflow"), None)
    if workflow is None:
        return False

    def is_operator(node: ast.AST) -> bool:  # operator.X(...)
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "operator")

    bound = {target.attr for node in ast.walk(workflow) if isinstance(node, ast.Assign) and is_operator(node.value)
             for target in node.targets if isinstance(target, ast.Attribute)
             and isinstance(target.value, ast.Name) and target.value.id == "self"}
    return any(isinstance(node, ast.Call) and (is_operator(node.func) or (
        isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self" and node.func.attr in bound)) for node in ast.walk(workflow))


def operators_built(code: str) -> set[str]:
    """The X of every `operator.X` the code mentions (unparsable code: none)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "operator"}


def workflow_body(code: str) -> str | None:
    """The statements of `Workflow.run_workflow`, unparsed (whitespace and comments
    normalised away); None when the code does not parse or has no such method."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "Workflow":
            for fn in cls.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "run_workflow":
                    return "\n".join(ast.unparse(stmt) for stmt in fn.body)
    return None


def template_similarity(code: str, family: str) -> float:
    """PAPERS.md §S3's near-template test: difflib ratio between the body of `code`'s run_workflow
    and the body of the family's template, in [0, 1]. Only the body: the template's
    `__init__` binds every operator, boilerplate that would lift every ratio. Code that does
    not parse is compared as raw text with the whole template."""
    template = template_workflow(family)
    body = workflow_body(code)
    if body is None:
        return difflib.SequenceMatcher(None, code, template).ratio()
    return difflib.SequenceMatcher(None, body, workflow_body(template)).ratio()


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _takes_exactly(function: ast.FunctionDef | ast.AsyncFunctionDef, positional: int) -> bool:
    args = function.args
    return len(args.posonlyargs) + len(args.args) == positional and not (args.vararg or args.kwonlyargs or args.kwarg)


class _Checker(ast.NodeVisitor):
    """Walks the whole tree once and collects what may not run in-process."""

    def __init__(self, operators: tuple[str, ...], classes: frozenset[str]):
        self.operators, self.classes = operators, classes
        self.problems: list[str] = []
        self.method_selves: set[int] = set()  # ids of the `self` parameters of methods
        self.called: set[int] = set()  # ids of Name nodes that are the callee of a call

    def flag(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.flag(node, "imports are not allowed (operator and asyncio.gather are already available)")

    visit_ImportFrom = visit_Import

    def check_binding(self, node: ast.AST, name: str | None) -> None:
        """Names bound other than by ast.Name (parameters, `except ... as`, class names,
        global/nonlocal): a double underscore could shadow the injected tick."""
        if name and name.startswith("__"):
            self.flag(node, f"the name {name} is not allowed (double underscore)")

    def check_self(self, node: ast.AST, name: str | None) -> None:
        if name == "self" and id(node) not in self.method_selves:
            self.flag(node, "`self` may only be the first parameter of a method, never assigned")

    def visit_Name(self, node: ast.Name) -> None:
        self.check_binding(node, node.id)
        if node.id in DENIED_NAMES:
            self.flag(node, f"{node.id} is not allowed in a workflow")
        if not isinstance(node.ctx, ast.Load):
            self.check_self(node, node.id)
        elif node.id in self.classes and id(node) not in self.called:
            self.flag(node, f"the class {node.id} may only be called (use self.<method>, not {node.id}.<method>)")

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name):
            self.called.add(id(node.func))
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.check_binding(node, node.arg)
        self.check_self(node, node.arg)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for name in node.names:
            self.check_binding(node, name)
            self.check_self(node, name)

    visit_Nonlocal = visit_Global

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith(DENIED_ATTRIBUTE_PREFIXES) or node.attr in DENIED_ATTRIBUTES:
            hint = " (use an f-string)" if node.attr in ("format", "format_map") else ""
            self.flag(node, f"the attribute .{node.attr} is not allowed{hint}")
        if isinstance(node.value, ast.Name) and node.value.id == "operator" and node.attr not in self.operators:
            self.flag(node, f"operator.{node.attr} is not available here; use one of {', '.join(self.operators)}")
        on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node.ctx, (ast.Store, ast.Del)) and not on_self:
            self.flag(node, "only attributes of self (self.name = ...) may be assigned")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, str) and "__" in value or isinstance(value, bytes) and b"__" in value:
            self.flag(node, "strings containing '__' are not allowed")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.flag(node, "a bare `except:` is not allowed; catch Exception")
        self.check_binding(node, node.name)
        self.check_self(node, node.name)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        for statement in node.finalbody:
            for inner in ast.walk(statement):
                if isinstance(inner, (ast.Return, ast.Break, ast.Continue)):
                    self.flag(inner, "return/break/continue inside `finally` is not allowed")
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def visit_BinOp(self, node: ast.BinOp | ast.AugAssign) -> None:
        if type(node.op) in _HUGE_OPS:
            self.flag(node, f"the operator {_HUGE_OPS[type(node.op)]} is not allowed (compute with Programmer)")
        self.generic_visit(node)

    visit_AugAssign = visit_BinOp

    def visit_Match(self, node: ast.Match) -> None:
        self.flag(node, "match statements are not allowed")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.bases or node.keywords or node.decorator_list:
            self.flag(node, f"class {node.name} may not have base classes, keywords or decorators")
        self.check_binding(node, node.name)
        for method in node.body:
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = method.args.posonlyargs + method.args.args
                if positional:  # the first one is `self`, whatever its name
                    self.method_selves.add(id(positional[0]))
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.decorator_list:
            self.flag(node, f"{node.name} may not have decorators")
        if node.name.startswith("__") and node.name != "__init__":
            self.flag(node, f"the method {node.name} is not allowed (only __init__ may have double underscores)")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


def instrument(tree: ast.Module) -> ast.Module:
    """Insert `__sf_tick__()` at every loop iteration, function entry, lambda call and
    comprehension element of a validated module (in place); returns the module."""
    return ast.fix_missing_locations(_Ticks().visit(tree))


def _tick() -> ast.Call:
    return ast.Call(ast.Name(TICK_NAME, ast.Load()), [], [])


class _Ticks(ast.NodeTransformer):
    def _tick_body(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_tick()))
        return node

    visit_For = visit_AsyncFor = visit_While = _tick_body
    visit_FunctionDef = visit_AsyncFunctionDef = _tick_body

    def visit_Lambda(self, node: ast.Lambda) -> ast.Lambda:
        self.generic_visit(node)
        node.body = ast.BoolOp(ast.And(), [_tick(), node.body])  # the tick returns True
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.comprehension:
        self.generic_visit(node)
        node.ifs.append(_tick())
        return node
