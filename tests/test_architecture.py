"""The package's shape, enforced: import contracts (import-linter, configured in pyproject.toml),
no import cycle among n6onnx modules (function-local imports included), few function-local imports
of n6onnx modules, each with a reason, and a line budget per file."""

from __future__ import annotations

import ast
import pathlib

import grimp
import pytest
from importlinter import cli as importlinter_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "n6onnx"
LINE_BUDGET = 600
MAX_LOCAL_IMPORTS = 5


def _sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_contracts():
    rc = importlinter_cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert rc == 0, "import-linter: a contract in pyproject.toml is broken (run `lint-imports` for the chains)"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (or a self-import)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_strongly_connected_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    g = grimp.build_graph("n6onnx", include_external_packages=False, cache_dir=None)
    edges = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    cycles = _strongly_connected(edges)
    assert cycles == [], f"import cycles among n6onnx modules: {cycles}"


def _local_imports(path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a comment saying why) for every import of an n6onnx module inside a function."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("n6onnx")):
                name = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import) and any(a.name.startswith("n6onnx") for a in node.names):
                name = ",".join(a.name for a in node.names)
            else:
                continue
            before = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            out.append((node.lineno, name, before.startswith("#") or "#" in lines[node.lineno - 1]))
    return out


def test_function_local_imports_are_few_and_explained():
    found = [(p.relative_to(ROOT), *imp) for p in _sources() for imp in _local_imports(p)]
    assert len({(p, line) for p, line, _, _ in found}) <= MAX_LOCAL_IMPORTS, found
    unexplained = [f for f in found if not f[3]]
    assert unexplained == [], f"function-local imports of n6onnx modules need a comment saying why: {unexplained}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_line_budget(path):
    n = len(path.read_text().splitlines())
    assert n <= LINE_BUDGET, f"{path.relative_to(ROOT)}: {n} lines (budget {LINE_BUDGET}): split it by concern"
