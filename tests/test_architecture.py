"""Measured limits of runner/'s shape, read from the code itself: short functions, no import cycle, and no choice
made by comparing a `_target_` string (a built object is asked instead: `schedule.plateau`, `len(stages)`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "runner"
MAX_FUNCTION_LINES = 60  # a function's code, its docstring aside (a formula and its citation are documentation)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
    first = body[1] if has_docstring else body[0]
    start = min([first.lineno, *(d.lineno for d in function.decorator_list)]) if not has_docstring else first.lineno
    return function.end_lineno - start + 1


def test_no_function_is_longer_than_the_limit():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({code_lines(node)} lines)"
            for path in modules().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(node) > MAX_FUNCTION_LINES]
    assert long == []


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The runner modules a module imports, at any depth of its code (a function-level import is an edge too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner"):
            found |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_runner_imports_one_that_imports_it_back():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    # a package's __init__ re-exporting its modules is not a cycle of its modules with each other
    graph = {name: {m for m in edges if not (name.startswith(m + ".") and known[m].name == "__init__.py")}
             for name, edges in graph.items()}
    assert cycles(graph) == []


def _reads_target(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Constant) and n.value == "_target_") or (isinstance(n, ast.Attribute)
               and n.attr == "_target_") for n in ast.walk(node))


def _target_carriers(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names a module binds to a `_target_` value (`activation = cfg.activation._target_`) and functions that
    return one (`def _choice(node): return node._target_.rsplit(...)`): comparing either is comparing it."""
    names, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _reads_target(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef) and any(
                isinstance(r, ast.Return) and r.value is not None and _reads_target(r.value) for r in ast.walk(node)):
            functions.add(node.name)
    return names, functions


def _mentions_target(node: ast.AST, carriers: tuple[set[str], set[str]] = (set(), set())) -> bool:
    names, functions = carriers
    return _reads_target(node) or any(
        (isinstance(n, ast.Name) and n.id in names) or
        (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions) for n in ast.walk(node))


def _string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value != "_target_" or \
        isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(_string(e) for e in node.elts)


def target_string_comparisons(source: str) -> list[int]:
    """Lines that compare a `_target_` value with a string: ==, !=, in, or .startswith/.endswith on it."""
    lines, tree = [], ast.parse(source)
    carriers = _target_carriers(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
                _mentions_target(side, carriers) and any(_string(other) for other in [node.left, *node.comparators])
                for side in [node.left, *node.comparators]) and not all(
                isinstance(op, (ast.In, ast.NotIn)) and _is_key_lookup(node) for op in node.ops):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("startswith", "endswith") and _mentions_target(node.func.value, carriers):
            lines.append(node.lineno)
    return lines


def _is_key_lookup(node: ast.Compare) -> bool:
    """`"_target_" in node`: asking whether a node names a callable, not which one."""
    return isinstance(node.left, ast.Constant) and node.left.value == "_target_"


@pytest.mark.parametrize("source, found", [
    ('if cfg.schedule._target_ == "runner.techniques.schedules.plateau": pass', [1]),
    ('ok = "plateau" in str(cfg.schedule.get("_target_", ""))', [1]),
    ('ok = str(cfg.pretraining._target_).endswith(".none")', [1]),
    ('activation = cfg.activation._target_\nif activation != "jax.nn.sigmoid": pass', [2]),
    ('def _choice(node):\n    return str(node.get("_target_", "")).rsplit(".", 1)[-1]\n'
     'ok = _choice(cfg.schedule) != "plateau"', [3]),
    ('ok = "_target_" in node', []),
    ("ok = get_object(cfg.clip._target_) is optax.identity", []),
])
def test_the_target_string_finder_tells_a_name_comparison_from_a_key_lookup(source, found):
    assert target_string_comparisons(source) == found


def test_no_choice_is_made_by_comparing_a_target_string():
    found = [f"{path.relative_to(ROOT)}:{line}" for path in modules().values()
             for line in target_string_comparisons(path.read_text())]
    assert found == []


def test_the_train_step_and_the_loop_import_no_config_machinery():
    """runner/training/train.py and runner/training/loop.py work on built objects: importing them imports no Hydra (the config is
    turned into objects in runner/training/build.py, once)."""
    import subprocess
    import sys

    code = "import sys, runner.training.train, runner.training.loop; print(sorted({'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# runner/'s parts, lowest first: a module imports only from its own part or one below it, so a part reads (and
# tests) with only what is beneath it. The commands (`python -m runner.X`) sit on top and may import any part; no
# part imports a command. A new module goes into the part of its concern; a new part takes its place in this list.
LAYERS = ("errors", "console", "config", "techniques", "data", "rundir", "report", "net", "scale", "training",
          "reuse", "cli")
COMMANDS = ("__main__", "lr_find", "predict", "export", "models", "book", "bench")


def part_of(module: str) -> str:
    """runner.training.loop -> training; runner.errors -> errors."""
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import, in `graph` (module -> modules it imports), of a command or of a part above the importer's."""
    found = []
    for module, imported in sorted(graph.items()):
        part = part_of(module)
        if part not in LAYERS:
            continue
        for other in sorted(imported):
            above = part_of(other)
            if above in COMMANDS or (above in LAYERS and LAYERS.index(above) > LAYERS.index(part)):
                found.append(f"{module} imports {other}")
    return found


def test_the_layer_check_finds_an_import_from_above_and_only_that():
    graph = {"runner.net.model": {"runner.errors", "runner.net.layers"}, "runner.rundir.records": {"runner.net.model"},
             "runner.training.loop": {"runner.lr_find"}, "runner.lr_find": {"runner.cli.run"}}
    assert upward_imports(graph) == ["runner.rundir.records imports runner.net.model",
                                     "runner.training.loop imports runner.lr_find"]


def test_each_part_of_runner_imports_only_from_itself_and_the_parts_below():
    known = modules()
    assert {part_of(m) for m in known} - {"runner"} == set(LAYERS) | set(COMMANDS), "a part without a place"
    assert upward_imports({name: imports(path, known) for name, path in known.items()}) == []
