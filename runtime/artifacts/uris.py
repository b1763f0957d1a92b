"""Artifact URIs: names of content, not of places, so they stay valid wherever the store's root moves.

* ``sha256:<hex>`` — a file whose bytes hash to ``<hex>``;
* ``dir:sha256:<hex>`` — a directory: ``<hex>`` is the hash of its manifest, the sorted lines
  ``<relative path>\\0<file sha256>\\n``, which is exactly what
  :func:`compiler.content_hash.hash_path` digests, so it equals the directory's content hash.
"""

from __future__ import annotations

from runtime.artifacts.backends import ArtifactError

FILE_PREFIX = "sha256:"
DIR_PREFIX = "dir:sha256:"


def file_uri(digest: str) -> str:
    return FILE_PREFIX + digest


def dir_uri(digest: str) -> str:
    return DIR_PREFIX + digest


def parse_uri(uri: str) -> tuple[bool, str]:
    """``(is_directory, hex digest)`` of an artifact URI; :class:`ArtifactError` if it is not one."""
    is_dir = uri.startswith(DIR_PREFIX)
    digest = uri[len(DIR_PREFIX):] if is_dir else uri[len(FILE_PREFIX):] if uri.startswith(FILE_PREFIX) else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError.one(f"not an artifact URI: {uri!r} (expected sha256:<hex> or dir:sha256:<hex>)")
    return is_dir, digest
