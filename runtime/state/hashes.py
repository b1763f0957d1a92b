"""The file hash cache: a file's sha256 kept while its size, mtime and inode stay the same (a store mixin)."""

from __future__ import annotations

from collections.abc import Iterable

from runtime.state.access import StoreAccess


class HashCache(StoreAccess):
    """The ``file_hashes`` table."""

    def cached_hash(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The sha256 stored for ``path`` if its size, mtime and inode still match, else ``None``."""
        row = self._row("SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                        (path, size, mtime_ns, inode))
        return str(row[0]) if row else None

    def cached_hashes_under(self, directory: str) -> dict[str, tuple[int, int, int, str]]:
        """Every cached entry below ``directory`` (an absolute path): path -> (size, mtime_ns, inode, sha256)."""
        prefix = directory.rstrip("/") + "/"
        rows = self._rows("SELECT * FROM file_hashes WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0"))
        return {row["path"]: (row["size"], row["mtime_ns"], row["inode"], row["sha256"]) for row in rows}

    def store_hash(self, path: str, size: int, mtime_ns: int, inode: int, sha256: str) -> None:
        self.store_hashes([(path, size, mtime_ns, inode, sha256)])

    def store_hashes(self, entries: Iterable[tuple[str, int, int, int, str]]) -> None:
        """Store many ``(path, size, mtime_ns, inode, sha256)`` entries in one transaction."""
        rows = list(entries)
        if not rows:
            return
        with self.transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, inode, sha256) VALUES (?,?,?,?,?)", rows)
