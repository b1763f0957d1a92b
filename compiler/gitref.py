"""Compile the spec as it is at a git revision, without a checkout (the two sides of ``mlops diff``).

From the commit's tree, the blobs compilation needs are written into a temporary directory laid out
like the repository: the spec, the ``policies/`` folder beside it, the modules its callables name, its
source datasets and any ``--policies`` folder inside the repository. The ordinary compiler then runs
there. A blob over 50 MB is not written: a small stand-in is, hashed as the blob's id; a Git LFS pointer
is written as it is and hashed as the sha256 it points to, which is the hash of the real file. The
working tree is hashed by the same rules, so an unchanged large or LFS-tracked file never shows as changed.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pygit2

from compiler import build_graph, check_policies, load_project
from compiler.content_hash import PathHasher, hash_file, hash_path
from compiler.diff import Side
from compiler.errors import Diagnostic, MlopsError, Position
from compiler.load import load_bytes

LARGE_BLOB_BYTES = 50 * 1024 * 1024
"""Blobs above this size are not materialized."""
LFS_POINTER_MAX = 1024
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_LFS_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)
WORKING_TREE = "working tree"


def lfs_oid(data: bytes) -> str | None:
    """The sha256 a Git LFS pointer file points to, or ``None`` for any other content."""
    if not data.startswith(_LFS_PREFIX):
        return None
    match = _LFS_OID.search(data)
    return match.group(1).decode() if match else None


def data_hasher(known: Mapping[Path, str] | None = None) -> PathHasher:
    """Content hashes for datasets: ``known`` stand-ins first, LFS pointers and large files by their ids."""
    known = known or {}

    def file_hash(path: Path) -> str:
        resolved = path.resolve()
        if resolved in known:
            return known[resolved]
        size = resolved.stat().st_size
        if size > LARGE_BLOB_BYTES:
            return f"git-blob:{pygit2.hashfile(str(resolved))}"
        if size <= LFS_POINTER_MAX:
            pointed = lfs_oid(resolved.read_bytes())
            if pointed is not None:
                return pointed
        return hash_file(resolved)

    return lambda path: hash_path(path, file_hash)


def compile_side(spec_path: Path, display: str, label: str, commit: str | None,
                 policy_dirs: list[Path], known: Mapping[Path, str] | None = None) -> Side:
    """Load, policy-check and graph one spec; a missing spec file gives an empty side."""
    if not spec_path.is_file():
        return Side(label, commit)
    project = load_project(spec_path, display)
    report = check_policies(project, policy_dirs)
    graph = build_graph(project, data_hasher(known))
    return Side(label, commit, project, graph, report)


@dataclass
class GitRepository:
    """The git repository holding a spec, and the spec's path inside it."""

    repo: pygit2.Repository
    root: Path
    spec: PurePosixPath

    @classmethod
    def containing(cls, spec_path: Path) -> GitRepository:
        """The repository whose work tree holds ``spec_path`` (which need not exist in it now)."""
        start = spec_path.resolve().parent
        found = pygit2.discover_repository(str(start)) if start.exists() else None
        if found is None:
            raise MlopsError.one(f"{spec_path}: not inside a git repository")
        repo = pygit2.Repository(found)
        if repo.workdir is None:
            raise MlopsError.one(f"{found}: a bare repository; run mlops diff in a work tree")
        root = Path(repo.workdir).resolve()
        try:
            relative = spec_path.resolve().relative_to(root)
        except ValueError:
            raise MlopsError.one(f"{spec_path}: not inside the repository at {root}") from None
        return cls(repo, root, PurePosixPath(relative.as_posix()))

    def commit(self, ref: str) -> pygit2.Commit:
        """The commit ``ref`` names (anything ``git rev-parse`` takes); an unknown ref is a user error."""
        try:
            commit: pygit2.Commit = self.repo.revparse_single(ref).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise MlopsError.one(f"unknown revision '{ref}': not a branch, tag or commit of {self.root}") from None
        return commit

    def merge_base(self, a: str, b: str) -> str:
        """The best common ancestor of two refs (for ``A...B``)."""
        found = self.repo.merge_base(self.commit(a).id, self.commit(b).id)
        if found is None:
            raise MlopsError.one(f"'{a}' and '{b}' have no common ancestor")
        return str(found)

    def side(self, ref: str, policy_dirs: list[Path]) -> Side:
        """The spec compiled as it is at ``ref``; errors are named ``ref:path:line:col``."""
        commit = self.commit(ref)
        with tempfile.TemporaryDirectory(prefix="mlops-diff-") as scratch:
            root = Path(scratch).resolve() / (self.root.name or "repo")
            root.mkdir()
            (root / ".git").mkdir()  # the compiler's repository root is where .git is
            dirs = [self._inside(d) for d in policy_dirs]
            known = _Materializer(self.repo, commit.tree, root).run(
                self.spec, [d for d in dirs if isinstance(d, PurePosixPath)])
            spec_path = root / self.spec
            mapped = [root / d if isinstance(d, PurePosixPath) else d for d in dirs]
            try:
                return compile_side(spec_path, f"{ref}:{self.spec}", ref, str(commit.id), mapped, known)
            except MlopsError as error:
                raise _relabel(error, root, ref) from None

    def _inside(self, directory: Path) -> PurePosixPath | Path:
        """A ``--policies`` folder inside the repository is read at the ref; one outside is used as it is."""
        try:
            return PurePosixPath(directory.resolve().relative_to(self.root).as_posix())
        except ValueError:
            return directory


class _Materializer:
    """Writes the blobs a spec's compilation needs from ``tree`` under ``root``."""

    def __init__(self, repo: pygit2.Repository, tree: pygit2.Tree, root: Path) -> None:
        self.repo, self.tree, self.root = repo, tree, root
        self.known: dict[Path, str] = {}

    def run(self, spec: PurePosixPath, extra: list[PurePosixPath]) -> dict[Path, str]:
        """Write the spec and what it references; returns the stand-ins' content hashes."""
        raw = self._write(spec)
        needed = [spec.parent / "policies", *extra, *(needed_paths(raw, spec) if raw is not None else [])]
        for path in dict.fromkeys(needed):
            self._write(path)
        return self.known

    def _write(self, path: PurePosixPath) -> bytes | None:
        """Write the blob or subtree at ``path`` if the tree has one; returns a blob's content."""
        key = path.as_posix()
        if key in ("", "."):
            return None
        try:
            obj = self.tree[key]
        except KeyError:
            return None
        return self._entry(obj, self.root / key)

    def _entry(self, obj: Any, target: Path) -> bytes | None:
        if obj.type_str == "tree":
            target.mkdir(parents=True, exist_ok=True)
            for child in obj:
                self._entry(child, target / child.name)
            return None
        if obj.type_str != "blob" or target.exists() or target.is_symlink():
            return None  # a submodule (not this repository's content), or written already
        target.parent.mkdir(parents=True, exist_ok=True)
        if obj.filemode == pygit2.enums.FileMode.LINK:
            os.symlink(os.fsdecode(obj.read_raw()), target)
            return None
        _, size = self.repo.odb.read_header(obj.id)
        if size > LARGE_BLOB_BYTES:
            target.write_text(f"mlops: git blob {obj.id} ({size} bytes) not materialized\n")
            self.known[target.resolve()] = f"git-blob:{obj.id}"
            return None
        data: bytes = obj.read_raw()
        target.write_bytes(data)
        return data


def needed_paths(raw: bytes, spec: PurePosixPath) -> list[PurePosixPath]:
    """Repository paths a spec's compilation reads: source datasets and the callables' module files.

    Read leniently: a spec that does not load yields nothing, and the compiler then reports why.
    """
    try:
        data = load_bytes(raw, spec.as_posix()).data
    except MlopsError:
        return []
    if not isinstance(data, dict):
        return []
    out: list[PurePosixPath] = []
    for dataset in _values(data.get("datasets")):
        path = dataset.get("path")
        if isinstance(path, str):
            out.extend(_normal(posixpath.join(spec.parent.as_posix(), path)))
        out.extend(_module_files(dataset.get("transform")))
    for model in _values(data.get("models")):
        out.extend(_module_files(model.get("train")))
        out.extend(_module_files(model.get("evaluate")))
    return out


def _values(section: object) -> Iterator[dict[str, Any]]:
    if isinstance(section, dict):
        yield from (v for v in section.values() if isinstance(v, dict))


def _normal(path: str) -> list[PurePosixPath]:
    """The normalized repository path, or nothing when it is absolute or leaves the repository."""
    norm = posixpath.normpath(path)
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        return []
    return [PurePosixPath(norm)]


def _module_files(target: object) -> list[PurePosixPath]:
    """``a.b:f`` -> ``a/b.py`` and ``a/b/__init__.py`` (where the compiler looks for the module)."""
    if not isinstance(target, str) or ":" not in target:
        return []
    parts = target.partition(":")[0].split(".")
    if not all(p.isidentifier() for p in parts):
        return []
    return [PurePosixPath(*parts[:-1], parts[-1] + ".py"), PurePosixPath(*parts, "__init__.py")]


def _relabel(error: MlopsError, root: Path, ref: str) -> MlopsError:
    """Name files under the scratch directory ``ref:path``, as ``git show`` does."""
    prefix = f"{root}{os.sep}"

    def fix(text: str) -> str:
        return text.replace(prefix, f"{ref}:").replace(str(root), ref)

    return type(error)([
        Diagnostic(fix(d.message), Position(fix(d.position.file), d.position.line, d.position.column)
                   if d.position else None, d.address, d.severity)
        for d in error.diagnostics
    ])


def split_range(base: str, head: str | None, repository: GitRepository) -> tuple[str, str | None]:
    """``A..B`` -> (A, B); ``A...B`` -> (merge base of A and B, B), as ``git diff`` reads them."""
    if head is None and "..." in base:
        a, _, b = base.partition("...")
        return repository.merge_base(a or "HEAD", b or "HEAD")[:12], b or "HEAD"
    if head is None and ".." in base:
        a, _, b = base.partition("..")
        return a or "HEAD", b or "HEAD"
    return base, head
