"""The layering of core/ and dashboard/: no import cycle, no upward import, no private name across modules, one job per file.

Every module is parsed (imports inside functions and under ``TYPE_CHECKING`` included: a cycle
hidden in a function is still a cycle for the reader). The layers, top to bottom, are
``core.config`` → ``core.store`` → ``core.data`` → ``core.model`` → ``core.training`` and
``core.evaluation`` (siblings: neither imports the other) → ``core.jobs`` and ``core.serving`` (siblings) →
``core.jobs.commands``
→ the ``core.<command>`` entry modules → ``dashboard``. See docs/architecture.md.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Rank of each layer: a module may import its own layer or a lower one (a smaller rank), never a higher one.
LAYERS: dict[str, int] = {
    "core.config": 0,
    "core.store": 1,
    "core.data": 2,
    "core.model": 3,
    "core.training": 4,
    "core.evaluation": 4,
    "core.jobs": 5,
    "core.serving": 5,  # a sibling of core.jobs: serving a run over HTTP
    "core.jobs.commands": 6,
    "core": 7,  # the package itself and the ``python -m core.<command>`` entry modules
    "dashboard": 8,
}
MAX_LINES = 420  # "about 400": one job per module
HEAVY = ("Keras", "TensorFlow", "scikit-learn", "tf-keras-vis", "SciPy", "pydicom", "plotly", "markdown", "kagglehub")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    names: tuple[str, ...]  # the names taken from it (empty for ``import x``)
    line: int
    in_function: bool
    text: str  # the source line, with its comment


def module_name(path: Path, root: Path) -> str:
    parts = list(path.with_suffix("").relative_to(root).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path, packages: Iterable[str] = ("core", "dashboard")) -> dict[str, Path]:
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of a project module in one file, at any depth."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                as_module = f"{node.module}.{alias.name}"
                target = as_module if as_module in modules else node.module
                if target in modules and target != name:
                    names = () if target == as_module else (alias.name,)
                    found.append(Import(name, target, names, node.lineno, id(node) in in_function,
                                        " ".join(lines[node.lineno - 1:node.end_lineno])))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, (), node.lineno, id(node) in in_function, lines[node.lineno - 1]))
    return found


def import_graph(root: Path, packages: Iterable[str] = ("core", "dashboard")) -> tuple[dict[str, set[str]], list[Import]]:
    modules = project_modules(root, packages)
    every = [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in every:
        graph[imp.source].add(imp.target)
    return graph, every


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_of(module: str) -> str:
    """The longest layer name that ``module`` is, or lies under."""
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len)


def upward(imp: Import) -> bool:
    source, target = layer_of(imp.source), layer_of(imp.target)
    if LAYERS[target] > LAYERS[source]:
        return True
    return LAYERS[target] == LAYERS[source] and source != target  # siblings (training, evaluation) stay apart


GRAPH, IMPORTS = import_graph(REPO)


def test_no_module_of_core_or_dashboard_is_part_of_an_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_check_finds_a_cycle_hidden_inside_a_function(tmp_path):
    package = tmp_path / "core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text('"""a."""\nfrom core.b import B\n\nA = 1\n')
    (package / "b.py").write_text('"""b."""\nB = 2\n\n\ndef late():\n    from core.a import A  # hidden\n    return A\n')
    graph, _ = import_graph(tmp_path, ("core",))
    assert find_cycle(graph) == ["core.a", "core.b", "core.a"]
    (package / "b.py").write_text('"""b."""\nB = 2\n')
    assert find_cycle(import_graph(tmp_path, ("core",))[0]) is None


def test_imports_point_down_the_layers_only():
    wrong = [f"{imp.source}:{imp.line} imports {imp.target} ({layer_of(imp.source)} → {layer_of(imp.target)})"
             for imp in IMPORTS if upward(imp)]
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_the_layer_check_refuses_an_upward_and_a_sideways_import():
    assert upward(Import("core.data.images", "core.model.classifier", (), 1, False, ""))
    assert upward(Import("core.training.fit", "core.evaluation.evaluate", (), 1, False, ""))
    assert not upward(Import("core.evaluation.evaluate", "core.data.pipeline", (), 1, False, ""))
    assert not upward(Import("core.jobs.sweep.store", "core.jobs.sweep.grid", (), 1, False, ""))


def test_every_module_has_a_layer():
    assert all(layer_of(name) for name in GRAPH)


def test_no_private_name_is_imported_from_another_module():
    private = [f"{imp.source}:{imp.line} takes {name} from {imp.target}"
               for imp in IMPORTS for name in imp.names if name.startswith("_")]
    assert not private, "\n".join(private)


def test_an_import_inside_a_function_says_why_it_is_late():
    """Only heavy imports wait for the function that needs them, and each says which library makes it heavy."""
    unexplained = [f"{imp.source}:{imp.line}: {imp.text.strip()}" for imp in IMPORTS
                   if imp.in_function and "#" not in imp.text]
    assert not unexplained, "function-level imports without a comment:\n" + "\n".join(unexplained)


def test_each_module_opens_with_a_line_saying_what_it_owns():
    missing = [name for name, path in project_modules(REPO, ("core", "dashboard", "benchmarks")).items()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, "modules without a docstring: " + ", ".join(missing)


def test_no_module_is_longer_than_about_four_hundred_lines():
    long = {name: n for name, path in project_modules(REPO, ("core", "dashboard", "benchmarks")).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_one_definition_of_the_repository_root_and_of_the_sigmoid():
    text = {name: path.read_text() for name, path in project_modules(REPO, ("core", "dashboard", "benchmarks")).items()}
    roots = [name for name, body in text.items() if re.search(r"^REPO(_ROOT)?\s*=", body, re.M)]
    sigmoids = [name for name, body in text.items() if re.search(r"^def _?sigmoid\(", body, re.M)]
    assert roots == ["core.config.paths"], roots
    assert sigmoids == ["core.evaluation.metrics"], sigmoids
