"""Content hashes of files and directories (sha256), the data half of every fingerprint.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_text("hi")
>>> hash_path(p)[:12]
'8f434346648f'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20

PathHasher = Callable[[Path], str]
"""A function from a file or directory to its content hash; the runtime passes a cached one."""


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_path(path: Path, file_hasher: PathHasher = hash_file) -> str:
    """sha256 of a file, or of a directory's sorted (relative path, file hash) listing."""
    if path.is_file():
        return file_hasher(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode() + b"\0" + file_hasher(child).encode() + b"\n")
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text whatever its YAML layout."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_value(value: Any) -> str:
    """sha256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
