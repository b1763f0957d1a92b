"""Where the repository that holds a spec is, and how spec paths and callables map into it."""

from __future__ import annotations

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


def module_file(module: str, root: Path) -> Path | None:
    """The file of a dotted module inside ``root`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    parts = module.split(".")
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if candidate.is_file() and inside(candidate, root):
            return candidate
    return None
