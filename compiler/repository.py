"""Where the repository that holds a spec is, and how spec paths and callables map into it."""

from __future__ import annotations

import ast
from pathlib import Path


def find_root(spec_path: Path) -> Path:
    """The git work tree holding ``spec_path``, else the spec's own directory."""
    start = spec_path.resolve().parent
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) stays within ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def top_level_names(path: Path) -> set[str] | None:
    """Names a module defines or imports at top level; ``None`` when it may make names dynamically."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return None if "__getattr__" in names else names


def module_file(module: str, root: Path) -> Path | None:
    """The file of a dotted module inside ``root`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    parts = module.split(".")
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if candidate.is_file() and inside(candidate, root):
            return candidate
    return None
