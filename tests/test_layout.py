"""The code's layout holds what README's layout section promises (issue: a newcomer's house).

* no module of ``compiler/`` or ``runtime/`` is over 500 lines;
* Ray is imported only under ``runtime/compute/``;
* SQL is written only under ``runtime/state/``;
* no import cycle between the project's modules, imports inside functions included;
* the runtime raises its own error classes, never a bare ``MlopsError`` or ``RuntimeError``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compiler", "runtime")
MAX_LINES = 500
SQL = re.compile(r"\b(SELECT\b[^;]*?\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+TABLE)\b")
"""Statements as mlops writes them (keywords in capitals)."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, at the top or inside functions (not for type checking only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
        block.body = []  # imports for type annotations only: never executed
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        imported.update(t for t in targets if t in MODULES and t != name)
    return imported


def test_no_module_is_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_ray_is_imported_only_in_the_compute_package() -> None:
    outside = []
    for name, path in MODULES.items():
        if name.startswith("runtime.compute"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            outside += [f"{name}: {m}" for m in modules if m == "ray" or m.startswith("ray.")]
    assert not outside, f"Ray imported outside runtime/compute: {outside}"


def test_sql_is_written_only_in_the_state_package() -> None:
    outside = []
    for name, path in MODULES.items():
        if name.startswith("runtime.state"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                outside.append(f"{name}:{node.lineno}")
    assert not outside, f"SQL outside runtime/state: {outside}"


def test_no_import_cycles_lazy_imports_included() -> None:
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in _imports(name, path))
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_runtime_raises_its_own_error_classes() -> None:
    bare = []
    for name, path in MODULES.items():
        if not name.startswith("runtime.") or name.startswith("runtime.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
                    raised = call.value.id  # MlopsError.one(...)
                elif isinstance(call, ast.Name):
                    raised = call.id
                else:
                    continue
                if raised in ("MlopsError", "RuntimeError"):
                    bare.append(f"{name}:{node.lineno} raises {raised}")
    assert not bare, f"bare errors raised: {bare}"
