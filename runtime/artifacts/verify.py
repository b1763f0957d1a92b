"""Remembered verifications: an artifact checked against its hash is not read again while its files are unchanged.

What was verified is kept as each file's identity (inode, size, mtime_ns, ctime_ns) in a marker file under
``<root>/verified/``; any write, rename over it, ``chmod`` or ``touch`` changes the ctime and makes it read
again. A file changed too recently to trust its timestamps is checked but not remembered.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import uuid

from compiler.content_hash import hash_file
from runtime.artifacts.backends import ArtifactCorrupt

VERIFY_RACY_WINDOW_NS = 2_000_000_000
"""A file changed this recently before it was verified is not remembered as verified (a same-size rewrite in
the same timestamp tick would go unseen); it is read again next time."""

Identity = tuple[str, int, int, int, int]
"""(relative path in its tree, or "" for an object; inode, size, mtime_ns, ctime_ns)."""


def identities_of(files: list[tuple[str, str]]) -> list[Identity] | None:
    """The identity of each (relative path, path); ``None`` when one of them is not a file."""
    found = []
    for relative, path in files:
        try:
            info = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        found.append((relative, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return found


def read_marker(marker: str) -> list[Identity] | None:
    """The identities an earlier verification remembered (``None``: none, or unreadable)."""
    try:
        with open(marker, encoding="utf-8") as handle:
            lines = handle.read().split("\n")[:-1]
        found = []
        for line in lines:
            relative, _, numbers = line.rpartition("\0")
            ino, size, mtime, ctime = (int(n) for n in numbers.split(" "))
            found.append((relative, ino, size, mtime, ctime))
        return found
    except (OSError, ValueError):
        return None


def write_marker(marker: str, identities: list[Identity]) -> None:
    """Remember a verification (atomically; best effort: a store that cannot be written is checked every time)."""
    text = "".join(f"{relative}\0{ino} {size} {mtime} {ctime}\n" for relative, ino, size, mtime, ctime in identities)
    tmp = f"{marker}.tmp-{uuid.uuid4().hex}"
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, marker)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def verify_files(uri: str, files: list[tuple[str, str, str]], identities: list[Identity], marker: str) -> None:
    """Hash each (relative path, path, expected digest); remember ``identities`` when none changed meanwhile."""
    started = time.time_ns()
    for _, path, expected in files:
        actual = hash_file(path)
        if actual != expected:
            raise ArtifactCorrupt.of(uri, path, actual)
    if identities_of([(relative, path) for relative, path, _ in files]) != identities:
        return  # changed while it was read: checked this time, not remembered
    if any(max(identity[3:]) >= started - VERIFY_RACY_WINDOW_NS for identity in identities):
        return  # changed too recently to trust its timestamps (git's "racily clean"): read again next time
    write_marker(marker, identities)
