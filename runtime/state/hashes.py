"""The file hash cache: a file's sha256 kept while its size, mtime and inode stay the same (a store mixin).

On a remote database (PostgreSQL) :meth:`HashCache.cached_hash` reads the entries of a file's whole folder
in one round trip, once per store, instead of one per file: an entry is only a hint checked against the
file's size, mtime and inode, so one read a moment earlier is as good (a miss only hashes the file again).
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.state.access import StoreAccess


class HashCache(StoreAccess):
    """The ``file_hashes`` table."""

    def cached_hash(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The sha256 stored for ``path`` if its size, mtime and inode still match, else ``None``."""
        if self.dialect.remote:
            folder = path.rpartition("/")[0]
            memo: dict[str, dict[str, tuple[int, int, int, str]]] = self.__dict__.setdefault("_hash_memo", {})
            if folder not in memo:
                rows = self._rows("SELECT * FROM file_hashes WHERE path >= ? AND path < ? AND strpos(substr(path, ?),"
                                  " '/') = 0", (folder + "/", folder + "0", len(folder) + 2))
                memo[folder] = {row["path"]: (row["size"], row["mtime_ns"], row["inode"], row["sha256"])
                                for row in rows}
            entry = memo[folder].get(path)
            return entry[3] if entry is not None and entry[:3] == (size, mtime_ns, inode) else None
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
        for path, size, mtime_ns, inode, sha256 in rows:  # keep cached_hash's folder reads current
            known = self.__dict__.get("_hash_memo", {}).get(path.rpartition("/")[0])
            if known is not None:
                known[path] = (size, mtime_ns, inode, sha256)
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO file_hashes (path, size, mtime_ns, inode, sha256) VALUES (?,?,?,?,?) ON CONFLICT (path)"
                " DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,"
                " sha256 = excluded.sha256", rows)
