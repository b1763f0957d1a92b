"""The cached data hasher: unchanged files are never read again; any change to size, mtime or inode re-hashes."""

from __future__ import annotations

import builtins
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import compiler
from compiler.content_hash import hash_file, hash_path
from runtime.artifacts.hashing import CachedHasher, sha256_file
from runtime.state.store import StateStore

OLD = 1_600_000_000  # an mtime well outside the racy window


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = StateStore.open(tmp_path / "state" / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every Python-level open of a file for reading, by resolved path (``open``, ``io.open``, ``Path.open``)."""
    counts: Counter[str] = Counter()
    real_open: Callable[..., Any] = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        mode = args[0] if args else kwargs.get("mode", "r")
        if isinstance(file, str | os.PathLike) and "r" in mode:
            counts[str(Path(file).resolve())] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return counts


def _write(path: Path, data: bytes, mtime: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_sha256_file_matches_the_compiler_hash(tmp_path: Path) -> None:
    path = _write(tmp_path / "f", os.urandom((2 << 20) + 17))
    assert sha256_file(path) == hash_file(path)


def test_a_second_hash_of_an_unchanged_file_does_not_read_it(store: StateStore, tmp_path: Path,
                                                             opened: Counter[str]) -> None:
    path = _write(tmp_path / "data.csv", b"a,b\n1,2\n")
    hasher = CachedHasher(store)
    assert hasher(path) == hash_file(path)
    assert opened[str(path)] == 2  # the hasher's read, and hash_file's above
    assert CachedHasher(store)(path) == hash_file(path)
    assert opened[str(path)] == 3  # only hash_file read it again


def test_touching_or_modifying_a_file_rehashes_it(store: StateStore, tmp_path: Path, opened: Counter[str]) -> None:
    path = _write(tmp_path / "data.csv", b"a,b\n1,2\n")
    hasher = CachedHasher(store)
    first = hasher(path)
    os.utime(path, (OLD + 10, OLD + 10))  # touched: same bytes, new mtime
    assert hasher(path) == first
    assert opened[str(path)] == 2
    _write(path, b"a,b\n1,3\n", OLD + 20)  # same size, new content
    assert hasher(path) != first and hasher(path) == hash_file(path)
    assert hasher.files_hashed == 3


def test_a_replaced_file_with_the_same_size_and_mtime_is_caught_by_its_inode(store: StateStore,
                                                                             tmp_path: Path) -> None:
    path = _write(tmp_path / "dir" / "data.csv", b"old!")
    hasher = CachedHasher(store)
    hasher(path)
    hasher(path.parent)
    replacement = _write(tmp_path / "new.csv", b"new!")
    os.replace(replacement, path)
    assert hasher(path.parent) == hash_path(path.parent)
    assert hasher(path) == hash_file(path)


def test_a_file_modified_just_now_is_not_cached(store: StateStore, tmp_path: Path, opened: Counter[str]) -> None:
    path = tmp_path / "fresh.csv"
    path.write_bytes(b"x")  # mtime is now: a same-size write in the same tick would be invisible
    hasher = CachedHasher(store)
    hasher(path)
    hasher(path)
    assert opened[str(path)] == 2
    os.utime(path, (time.time() - 10, time.time() - 10))
    hasher(path)
    hasher(path)
    assert opened[str(path)] == 3


def test_directories_hash_like_hash_path_and_rehash_only_what_changed(store: StateStore, tmp_path: Path,
                                                                      opened: Counter[str]) -> None:
    root = tmp_path / "dir"
    files = [_write(root / name, name.encode() * 100) for name in ("a.csv", "b/c.csv", "b/d/e.csv", "a-b.csv")]
    hasher = CachedHasher(store)
    assert hasher(root) == hash_path(root)
    reads = sum(opened.values())
    assert CachedHasher(store)(root) == hash_path(root, file_hasher=hash_file)
    assert sum(opened.values()) == reads + len(files)  # only hash_path's own reads
    added = _write(root / "b" / "new.csv", b"new")
    before = Counter(opened)
    assert hasher(root) == hash_path(root)
    assert opened - before == Counter({str(p.resolve()): 1 for p in [*files, added]}) + Counter({str(added): 1})


def test_a_no_op_graph_build_reads_no_data(store: StateStore, tmp_path: Path, make_project: Any,
                                           opened: Counter[str]) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "demo",
            "datasets": {"raw": {"path": "data/raw.csv"}, "many": {"path": "data/many", "format": "dir"}}}
    path = make_project(tmp_path / "proj", spec, files={})
    data = [_write(tmp_path / "proj" / "data" / "raw.csv", b"x,y\n1,2\n"),
            *(_write(tmp_path / "proj" / "data" / "many" / f"{i}.csv", b"x\n%d\n" % i) for i in range(5))]
    project = compiler.load_project(path)
    first = compiler.build_graph(project, data_hasher=CachedHasher(store))
    assert all(opened[str(p)] == 1 for p in data)
    second = compiler.build_graph(project, data_hasher=CachedHasher(store))
    assert all(opened[str(p)] == 1 for p in data)
    assert [n.fingerprint for n in first.nodes()] == [n.fingerprint for n in second.nodes()]
    assert first.nodes() and [n.fingerprint for n in compiler.build_graph(project).nodes()] == [
        n.fingerprint for n in first.nodes()]


def test_big_uncached_files_of_a_directory_are_hashed_on_threads_with_the_same_result(store: StateStore,
                                                                                       tmp_path: Path) -> None:
    root = tmp_path / "big"
    for i in range(4):
        _write(root / f"{i}.bin", os.urandom(3 << 20))
    _write(root / "small.txt", b"s")
    parallel = CachedHasher(store, workers=4)
    assert parallel(root) == hash_path(root)
    assert (parallel.files_hashed, parallel.bytes_hashed) == (5, (12 << 20) + 1)
    again = CachedHasher(store, workers=4)
    assert again(root) == hash_path(root) and again.files_hashed == 0


@pytest.mark.parametrize("spelling", [".", "sub", "./sub/", "sub/../sub"])
def test_each_file_is_read_once_however_the_directory_is_spelled(store: StateStore, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  opened: Counter[str], spelling: str) -> None:
    files = [_write(tmp_path / "sub" / name, os.urandom(3 << 20)) for name in ("a", "b", "c/d")]
    monkeypatch.chdir(tmp_path if spelling != "." else tmp_path / "sub")
    hasher = CachedHasher(store, workers=2)
    assert hasher(Path(spelling)) == hash_path(tmp_path / "sub", file_hasher=hash_file)
    assert hasher.files_hashed == 3
    assert all(opened[str(p)] == 2 for p in files)  # the hasher's read and hash_file's
