"""Artifacts on any other fsspec filesystem (``memory://``, ``gs://`` with gcsfs, ...), where one PUT is atomic
by itself. S3 has its own backend (:mod:`runtime.artifacts.s3`); a local folder is
:class:`runtime.artifacts.backends.LocalBackend`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from compiler.content_hash import hash_file
from runtime.artifacts.backends import ArtifactError, ArtifactStoreUnavailable, Backend, StoredObject, is_digest


class FsspecBackend(Backend):
    """Objects on any other fsspec filesystem (``memory://``, ``gs://`` with gcsfs, ...); S3 has its own
    (:mod:`runtime.artifacts.s3`)."""

    def __init__(self, protocol: str, root: str, options: dict[str, Any]) -> None:
        import fsspec

        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError) as exc:  # no driver installed for it, or an unknown protocol
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactStoreUnavailable.of(root, f"cannot open {protocol}:// storage ({detail})") from None
        self.base = str(self.fs._strip_protocol(root)).rstrip("/")

    def key(self, digest: str) -> str:
        return f"{self.base}/objects/{digest[:2]}/{digest[2:]}"

    def location(self, digest: str) -> str:
        return self.fs.unstrip_protocol(self.key(digest))

    def exists(self, digest: str, size: int | None = None) -> bool:
        return bool(self.fs.exists(self.key(digest)))  # a PUT is atomic: an object there is whole

    def open_read(self, digest: str) -> IO[bytes]:
        try:
            return self.fs.open(self.key(digest), "rb")
        except FileNotFoundError:
            raise ArtifactError.one(f"artifact sha256:{digest} is not in {self.base}") from None

    def write_file(self, path: Path) -> str:
        digest = hash_file(path)
        if not self.exists(digest):
            self.fs.put_file(str(path), self.key(digest))  # one PUT: visible only once complete
        return digest

    def write_bytes(self, digest: str, data: bytes) -> None:
        self.fs.pipe_file(self.key(digest), data)

    def list_objects(self) -> Iterator[StoredObject]:
        """Each object with its size and time (one the filesystem gives no time for is never old enough to go)."""
        base = f"{self.base}/objects/"
        found = self.fs.find(base, detail=True) if self.fs.exists(base) else {}
        for key, info in found.items():
            digest = str(key).removeprefix(base).replace("/", "")
            if is_digest(digest):
                stamp = info.get("LastModified") or info.get("created") or info.get("mtime") or info.get("updated")
                when = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or "inf")
                yield StoredObject(digest, int(info.get("size") or 0), when)

    def delete(self, digests: list[str]) -> None:
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.key(digest))

    def usage(self, folder: str) -> int:
        path = f"{self.base}/{folder}"
        return int(self.fs.du(path)) if self.fs.exists(path) else 0
