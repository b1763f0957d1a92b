"""Content hashes of data, read once and then cached in the state store, so a no-op plan reads no data.

A file's cached sha256 is reused while its (resolved path, size, mtime_ns, inode) are unchanged,
the rule git and DVC use. In a directory, the files that must be read are hashed on a few threads
(``hashlib`` and file reads release the GIL). Like git's "racily clean" check, a file modified within
``racy_window_s`` of being hashed is not cached (a same-size rewrite in the same mtime tick would
otherwise go unseen); it is simply hashed again next time.

    hasher = CachedHasher(store)
    graph = compiler.build_graph(project, data_hasher=hasher)
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compiler.content_hash import hash_path
from runtime.state.store import StateStore

CHUNK = 1 << 20
RACY_WINDOW_S = 2.0
FLUSH_EVERY = 1000
PARALLEL_MIN_BYTES = 8 << 20
"""Hash a directory's uncached files on threads only when they hold at least this much data."""


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


Identity = tuple[int, int, int]
"""(size, mtime_ns, inode)."""


class CachedHasher:
    """A :data:`compiler.content_hash.PathHasher` (``Path -> sha256``) backed by the state store's hash cache."""

    def __init__(self, store: StateStore, racy_window_s: float = RACY_WINDOW_S, workers: int | None = None) -> None:
        self.store = store
        self.racy_window_ns = int(racy_window_s * 1e9)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.files_hashed = 0
        """Files read so far (cache misses)."""
        self.bytes_hashed = 0
        self._pending: list[tuple[str, int, int, int, str]] = []

    def __call__(self, path: Path) -> str:
        """The content hash of a file or directory (as :func:`compiler.content_hash.hash_path` defines it)."""
        path = Path(path)
        try:
            if path.is_dir():
                return self._directory(path)
            return self._file(path, str(path.resolve()), None)
        finally:
            self._flush()

    def _directory(self, path: Path) -> str:
        root = str(path.resolve())
        known = self.store.cached_hashes_under(root)
        digests: dict[str, str] = {}  # each file's path as hash_path's walk spells it -> its sha256
        misses: list[tuple[int, str, str]] = []
        base = "" if str(path) == "." else f"{path}/"
        for relative, info in _files_under(path):
            name, key = base + relative, f"{root}/{relative}"
            entry = known.get(key)
            if entry is not None and entry[:3] == (info.st_size, info.st_mtime_ns, info.st_ino):
                digests[name] = entry[3]
            else:
                misses.append((info.st_size, name, key))
        if len(misses) > 1 and self.workers > 1 and sum(size for size, _, _ in misses) >= PARALLEL_MIN_BYTES:
            misses.sort(key=lambda miss: -miss[0])  # big files first, so the threads finish together
            with ThreadPoolExecutor(self.workers) as pool:
                measured = list(pool.map(_measure, [Path(name) for _, name, _ in misses]))
            for (_, name, key), (identity, digest, started, unchanged) in zip(misses, measured, strict=True):
                self._remember(key, identity, digest, started, unchanged)
                digests[name] = digest
        # hash_path walks the directory itself; a file the walk above did not see is hashed on demand
        return hash_path(path, file_hasher=lambda child: digests.get(str(child)) or self._file(
            child, str(Path(root) / child.relative_to(path)), known))

    def _file(self, path: Path, key: str, known: dict[str, tuple[int, int, int, str]] | None) -> str:
        info = os.stat(path)
        identity = (info.st_size, info.st_mtime_ns, info.st_ino)
        if known is not None:
            entry = known.get(key)
            if entry is not None and entry[:3] == identity:
                return entry[3]
        else:
            cached = self.store.cached_hash(key, *identity)
            if cached is not None:
                return cached
        identity_before, digest, started, unchanged = _measure(path)
        self._remember(key, identity_before, digest, started, unchanged)
        return digest

    def _remember(self, key: str, identity: Identity, digest: str, started: int, unchanged: bool) -> None:
        """Count a read and queue its cache entry, unless the file changed meanwhile or is racily new."""
        self.files_hashed += 1
        self.bytes_hashed += identity[0]
        if unchanged and identity[1] < started - self.racy_window_ns:
            self._pending.append((key, *identity, digest))
            if len(self._pending) >= FLUSH_EVERY:
                self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.store.store_hashes(pending)


def _files_under(directory: Path) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of every file below ``directory``: the files ``hash_path`` hashes
    (symlinked files followed, symlinked directories not entered)."""
    found = []
    stack = [(str(directory), "")]
    while stack:
        current, relative = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, f"{relative}{entry.name}/"))
                elif entry.is_file():
                    found.append((relative + entry.name, entry.stat()))
    return found


def _measure(path: Path) -> tuple[Identity, str, int, bool]:
    """(identity before the read, sha256, time the read started, whether the file stayed unchanged meanwhile)."""
    before = os.stat(path)
    started = time.time_ns()
    digest = sha256_file(path)
    after = os.stat(path)
    identity = (before.st_size, before.st_mtime_ns, before.st_ino)
    return identity, digest, started, identity == (after.st_size, after.st_mtime_ns, after.st_ino)
