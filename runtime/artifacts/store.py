"""The artifact store: content-addressed files, directories and models, local or on fsspec storage.

Artifacts are named by their content (:mod:`runtime.artifacts.uris`: ``sha256:<hex>``, ``dir:sha256:<hex>``).
Every object lives at ``<root>/objects/<hex[:2]>/<hex[2:]>``. The root is a local directory
(relative roots are resolved against ``base_dir``) or an fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``memory://...``; the matching fsspec driver must be installed).

Writes are atomic. Locally an object is written to a temporary file under ``<root>/objects``,
flushed, fsynced, made read-only and renamed into place (then the directory is fsynced), so a
crash never leaves a half-written object under its final name. A run's output directory is
adopted instead (:meth:`~ArtifactStore.adopt_dir`): its files are hard-linked in under their
hashes without an fsync each, and the executor makes a whole round of them durable with one
:meth:`~ArtifactStore.sync` before the state records them (a group commit, as databases do with
their log). A killed process leaves nothing partial either way; an object a power loss tore
before its sync is never recorded, and is replaced when the same content is stored again.

On object stores a single PUT is atomic by itself and the object is written to its final key
directly; on S3 (:mod:`runtime.artifacts.s3`) with its sha256 as the request's checksum and, for a new
object, ``If-None-Match: *``, so neither a cut upload nor a concurrent writer ever leaves a wrong object.
Every read that returns content (:meth:`~ArtifactStore.get_file`, :meth:`~ArtifactStore.read_bytes`,
:meth:`~ArtifactStore.materialize_dir`, :meth:`~ArtifactStore.load_model`) checks the hash and
raises :class:`ArtifactCorrupt` on a mismatch. :meth:`~ArtifactStore.verified_path` is the zero-copy
path for local readers: checked against the hash before it is handed out, and remembered by each file's
(inode, size, mtime_ns, ctime_ns) so an unchanged artifact costs a ``stat`` per file the next time
(:mod:`runtime.artifacts.verify`).
:meth:`~ArtifactStore.local_path` does not check (for writers and tools that verify otherwise).

Models are saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: an artifact
that would unpickle code (any global outside torch's allow-list) is refused, and the code never runs;
what is not a state dict is refused when it is saved (:mod:`runtime.artifacts.state_dict`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.artifacts import durability
from runtime.artifacts.backends import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactMissing,
    ArtifactStoreUnavailable,
    Backend,
    LocalBackend,
    StoredObject,
    TreeScan,
    chunks,
    discard_tree,
    remove_tree,
    scan_tree,
)
from runtime.artifacts.fsspec_backend import FsspecBackend
from runtime.artifacts.s3 import S3Backend
from runtime.artifacts.state_dict import state_dict_problem
from runtime.artifacts.uris import dir_uri, file_uri, parse_uri
from runtime.artifacts.verify import identities_of, read_marker, verify_files

__all__ = ["ArtifactCorrupt", "ArtifactError", "ArtifactMissing", "ArtifactStore", "ArtifactStoreUnavailable",
           "StoredObject", "TreeScan", "dir_uri", "file_uri",
           "parse_uri", "remove_tree", "scan_tree", "state_dict_problem"]

LOCAL_PROTOCOLS = ("", "file", "local")
S3_PROTOCOLS = ("s3", "s3a")


def _listing(path: Path) -> list[Path]:
    """The files of a directory in the order :func:`compiler.content_hash.hash_path` uses."""
    return sorted(p for p in path.rglob("*") if p.is_file())


def _actual(exc: ArtifactCorrupt) -> str:
    """The digest a failed check says the content hashes to."""
    return str(exc).rsplit(" ", 1)[-1].removeprefix("sha256:")


class ArtifactStore:
    """Content-addressed storage under ``root`` (a local directory or an fsspec URL)."""

    def __init__(self, root: str | Path, base_dir: Path | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        text = str(root)
        protocol, _, rest = text.partition("://") if "://" in text else ("", "", text)
        if protocol in LOCAL_PROTOCOLS:
            local = Path(rest).expanduser()
            self.root = str(local if local.is_absolute() else (base_dir or Path.cwd()) / local)
            self._backend: Backend = LocalBackend(Path(self.root))
        elif protocol in S3_PROTOCOLS:
            self._backend = S3Backend(text, storage_options or {})
            self.root = self._backend.url
        else:
            self.root = text.rstrip("/")
            self._backend = FsspecBackend(protocol, text, storage_options or {})

    # --- writing ---------------------------------------------------------------------------------

    def put_file(self, path: Path, sha256: str | None = None) -> str:
        """Store a file; returns ``sha256:<hex>``. With a known ``sha256`` an object already stored is not rewritten."""
        path = Path(path)
        if sha256 is not None and self._stored(sha256, os.stat(path).st_size):
            return file_uri(sha256)
        digest = self._backend.write_file(path)
        if sha256 is not None and digest != sha256:
            raise ArtifactError.one(f"{path} changed while it was stored (expected sha256 {sha256}, got {digest})")
        return file_uri(digest)

    def put_bytes(self, data: bytes) -> str:
        """Store bytes; returns ``sha256:<hex>``."""
        digest = hashlib.sha256(data).hexdigest()
        if isinstance(self._backend, S3Backend) or not self._stored(digest, len(data)):  # S3 checks as it writes
            self._backend.write_bytes(digest, data)
        return file_uri(digest)

    def put_dir(self, path: Path) -> str:
        """Store every file under a directory and its manifest; returns ``dir:sha256:<manifest hex>``."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError.one(f"{path} is not a directory")
        lines = []
        for child in _listing(path):
            relative = child.relative_to(path).as_posix()
            if "\n" in relative:
                raise ArtifactError.one(f"{child}: file names with a newline cannot be stored")
            _, digest = parse_uri(self.put_file(child))
            lines.append(relative.encode() + b"\0" + digest.encode() + b"\n")
        _, manifest = parse_uri(self.put_bytes(b"".join(lines)))
        return dir_uri(manifest)

    def scratch_dir(self) -> Path | None:
        """A fresh private directory on the store's own filesystem (local storage), for work whose output
        :meth:`adopt_dir` then takes over without copying; ``None`` on remote storage."""
        if not isinstance(self._backend, LocalBackend):
            return None
        path = f"{self.root}/tmp/run-{uuid.uuid4().hex}"
        try:
            os.mkdir(path, 0o700)
        except FileNotFoundError:  # the first run of a new store
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)
        return Path(path)

    def adopt_dir(self, path: Path, scan: TreeScan | None = None) -> str:
        """Store a directory that is handed over to the store; returns ``dir:sha256:<manifest hex>``.

        Locally, when ``path`` is on the store's filesystem, nothing is copied: the files are made
        read-only and hard-linked in as their objects, and the directory itself becomes the artifact's
        tree (what :meth:`local_path` returns). Their content is durable before they are visible; call
        :meth:`sync` before recording the URI anywhere that must outlive a power loss. Elsewhere this
        is :meth:`put_dir`. ``path`` is gone or read-only afterwards either way. ``scan`` is
        :func:`scan_tree` of ``path``, when the caller has it.
        """
        backend = self._backend
        if not isinstance(backend, LocalBackend):
            return self.put_dir(path)
        scan = scan or scan_tree(path)
        if scan.foreign:
            return self.put_dir(path)  # links point at files the run does not own: copy their content
        for relative, absolute, _ in scan.files:
            if "\n" in relative:
                raise ArtifactError.one(f"{absolute}: file names with a newline cannot be stored")
        try:
            digest = backend.adopt(Path(path), scan)
        except OSError:  # another filesystem, or no hard links here: copy instead
            return self.put_dir(path)
        return dir_uri(digest)

    def sync(self) -> None:
        """Make every name :meth:`adopt_dir` gave so far durable (local storage; a no-op on object stores)."""
        if isinstance(self._backend, LocalBackend):
            durability.flush_all(self.root)

    def save_model(self, state_dict: dict[str, Any]) -> str:
        """``torch.save`` a state dict to a temporary file and store it; returns ``sha256:<hex>``.

        Only what :meth:`load_model` can read back passes (:func:`state_dict_problem`): a mapping of
        names to tensors and plain values. A ``torch.nn.Module`` or any other object is refused here,
        not when the model is loaded.
        """
        import torch

        problem = state_dict_problem(state_dict)
        if problem is not None:
            raise ArtifactError.one(f"refusing to save the model: {problem}")
        fd, name = tempfile.mkstemp(suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state_dict, handle)
            return self.put_file(Path(name))
        finally:
            os.unlink(name)

    # --- reading ---------------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        """Whether the artifact is fully present (for a directory: its manifest and every file)."""
        is_dir, digest = parse_uri(uri)
        if not self._backend.exists(digest):
            return False
        if not is_dir:
            return True
        try:
            entries = self._manifest(digest)
        except ArtifactError:
            return False
        return all(self._backend.exists(file_digest) for _, file_digest in entries)

    def read_bytes(self, uri: str) -> bytes:
        """The content of a file artifact, checked against its hash."""
        is_dir, digest = parse_uri(uri)
        if is_dir:
            raise ArtifactError.one(f"{uri} is a directory; use materialize_dir")
        return self._read_verified(digest)

    def get_file(self, uri: str, dest: Path) -> Path:
        """Copy a file artifact to ``dest`` (atomically, checked against its hash); returns ``dest``."""
        is_dir, digest = parse_uri(uri)
        if is_dir:
            raise ArtifactError.one(f"{uri} is a directory; use materialize_dir")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._copy_verified(digest, dest)
        return dest

    def materialize_dir(self, uri: str, dest: Path) -> Path:
        """Recreate a directory artifact at ``dest`` (which must not exist or be empty); returns ``dest``.

        The files are checked against their hashes; the directory appears at ``dest`` all at once.
        """
        is_dir, digest = parse_uri(uri)
        if not is_dir:
            raise ArtifactError.one(f"{uri} is a file; use get_file")
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise ArtifactError.one(f"cannot materialize {uri} into {dest}: it exists and is not an empty directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            for relative, file_digest in self._manifest(digest):
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self._copy_verified(file_digest, target)
            os.chmod(staging, 0o755)
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    def local_path(self, uri: str) -> Path | None:
        """A local path holding the artifact (read-only; not re-hashed), or ``None`` on remote storage.

        A directory artifact is laid out once as a tree of hard links under ``<root>/trees/<hex>``.
        """
        is_dir, digest = parse_uri(uri)
        if not isinstance(self._backend, LocalBackend):
            return None
        if not is_dir:
            path = self._backend.object_file(digest)
            return Path(path) if os.path.isfile(path) else None
        tree = f"{self._backend.root}/trees/{digest}"
        if os.path.isdir(tree):  # laid out before (or adopted): no need to read the manifest
            return Path(tree)
        if not self._backend.exists(digest):
            return None
        return self._backend.tree(digest, self._manifest(digest))

    def verified_path(self, uri: str) -> Path | None:
        """:meth:`local_path`, checked against the URI's content hash first; ``None`` on remote storage
        (whose readers copy through :meth:`get_file` / :meth:`materialize_dir`, which check as they copy).

        A file is its object; a directory is its tree, which must hold exactly the manifest's files, each
        hashing to its entry. What was verified is remembered by each file's (inode, size, mtime_ns,
        ctime_ns) under ``<root>/verified/``, so checking an unchanged artifact again costs a ``stat`` per
        file: any write, rename over it, ``chmod`` or ``touch`` changes the ctime and makes it read again.
        Raises a one-line :class:`ArtifactMissing` (``artifact missing: <uri>``) or :class:`ArtifactCorrupt`
        (``artifact corrupt: <uri> (<path>) hashes to sha256:<hex>``).
        """
        is_dir, digest = parse_uri(uri)
        backend = self._backend
        if not isinstance(backend, LocalBackend):
            return None
        manifest_file = backend.object_file(digest)
        marker = f"{self.root}/verified/{'dir-' if is_dir else ''}{digest}"
        if not is_dir:
            identities = identities_of([("", manifest_file)])
            if identities is None:
                raise ArtifactMissing.of(uri)
            if read_marker(marker) != identities:
                verify_files(uri, [("", manifest_file, digest)], identities, marker)
            return Path(manifest_file)
        tree = f"{backend.root}/trees/{digest}"
        if not os.path.isdir(tree):  # laid out from the objects (checked below) the first time it is read
            if not backend.exists(digest):
                raise ArtifactMissing.of(uri)
            try:
                backend.tree(digest, self._manifest(digest))
            except ArtifactCorrupt as exc:
                raise ArtifactCorrupt.of(uri, manifest_file, _actual(exc)) from None
            except ArtifactError:
                raise ArtifactMissing.of(uri) from None
        files = [(relative, absolute) for relative, absolute, _ in scan_tree(tree).files]
        identities = identities_of([("", manifest_file), *files])
        if identities is None:
            raise ArtifactMissing.of(uri)
        if read_marker(marker) == identities:
            return Path(tree)
        try:
            entries = self._manifest(digest)
        except ArtifactCorrupt as exc:
            raise ArtifactCorrupt.of(uri, manifest_file, _actual(exc)) from None
        expected = dict(entries)
        try:
            for relative, absolute in files:
                if relative not in expected:
                    raise ArtifactCorrupt.one(f"artifact corrupt: {uri} ({absolute}) is not one of its files")
            for relative, _ in entries:
                if relative not in dict(files):
                    raise ArtifactMissing.of(uri, f"{tree}/{relative}")
            verify_files(uri, [("", manifest_file, digest),
                               *((relative, absolute, expected[relative]) for relative, absolute in files)],
                         identities, marker)
        except ArtifactError:  # the next read lays the tree out again from its objects (repaired by a rebuild)
            discard_tree(Path(tree))
            raise
        return Path(tree)

    def verify(self, uri: str) -> None:
        """Re-read an artifact (every file of a directory) and raise :class:`ArtifactCorrupt` on a mismatch."""
        is_dir, digest = parse_uri(uri)
        for _, file_digest in self._manifest(digest) if is_dir else []:
            self._hash_object(file_digest)
        self._hash_object(digest)

    def load_model(self, uri: str, map_location: str = "cpu") -> dict[str, Any]:
        """Load a model saved by :meth:`save_model` without unpickling code (``weights_only=True``)."""
        import pickle

        import torch

        data = self.read_bytes(uri)
        try:
            model = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            detail = str(exc.__context__ or "").strip() or (str(exc).strip().splitlines() or ["?"])[0]
            raise ArtifactError.one(f"refusing to load model {uri}: it is not a plain weights file, and loading it "
                                    f"without weights_only could run code ({detail})") from exc
        except (RuntimeError, ValueError, EOFError) as exc:
            raise ArtifactError.one(f"model {uri} is not a torch weights file: {exc}") from exc
        if not isinstance(model, dict):
            raise ArtifactError.one(f"model {uri} is a {type(model).__name__}, not a state dict")
        return model

    # --- collecting (runtime.lifecycle.gc) -------------------------------------------------------

    def objects(self) -> Iterator[StoredObject]:
        """Every object stored: its digest, size and when it was last written (on :meth:`clock`'s clock)."""
        return self._backend.list_objects()

    def clock(self) -> float:
        """Now, on the clock that stamps the objects (the filesystem's, the S3 server's)."""
        return self._backend.clock()

    def members(self, uri: str) -> list[str]:
        """The digests of the objects an artifact is made of: a file's own; a directory's manifest and files."""
        is_dir, digest = parse_uri(uri)
        return [digest, *(file_digest for _, file_digest in self._manifest(digest))] if is_dir else [digest]

    def delete_objects(self, digests: list[str]) -> None:
        """Remove these objects (locally with the tree of a manifest among them); one already gone is no error."""
        self._backend.delete(digests)

    def usage(self, folder: str) -> int:
        """Bytes under ``<root>/<folder>`` outside the objects (``inference``, ``tmp``)."""
        return self._backend.usage(folder)

    def cleanup_temp(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files a crashed writer left (local storage); returns how many went."""
        return self._backend.cleanup_temp(older_than_s) if isinstance(self._backend, LocalBackend) else 0

    # --- internals -------------------------------------------------------------------------------

    def _stored(self, digest: str, size: int) -> bool:
        """Whether the object is there whole, so that storing its content again can be skipped."""
        if isinstance(self._backend, LocalBackend):
            return self._backend.exists(digest, size) and self._intact(digest)
        return self._backend.intact(digest, size)

    def _intact(self, digest: str) -> bool:
        """Whether a stored object still holds its content (a tampered one is written again, not reused)."""
        try:
            self.verified_path(file_uri(digest))
        except ArtifactError:
            return False
        return True

    def _manifest(self, digest: str) -> list[tuple[str, str]]:
        entries = []
        for line in self._read_verified(digest).split(b"\n")[:-1]:
            relative, sep, file_digest = line.decode().partition("\0")
            parts = PurePosixPath(relative).parts
            if not sep or not parts or relative.startswith("/") or ".." in parts:
                raise ArtifactError.one(f"dir:sha256:{digest} is not a valid directory manifest")
            parse_uri(file_uri(file_digest))
            entries.append((relative, file_digest))
        return entries

    def _check(self, digest: str, actual: str) -> None:
        """Refuse content that does not hash to its name, in one line naming the object."""
        if actual != digest:
            raise ArtifactCorrupt.of(file_uri(digest), self._backend.location(digest), actual)

    def _read_verified(self, digest: str) -> bytes:
        with self._backend.open_read(digest) as handle:
            data = handle.read()
        self._check(digest, hashlib.sha256(data).hexdigest())
        return data

    def _hash_object(self, digest: str) -> None:
        hasher = hashlib.sha256()
        with self._backend.open_read(digest) as handle:
            for chunk in chunks(handle):
                hasher.update(chunk)
        self._check(digest, hasher.hexdigest())

    def _copy_verified(self, digest: str, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
        hasher = hashlib.sha256()
        try:
            with self._backend.open_read(digest) as source, open(tmp, "wb") as out:
                for chunk in chunks(source):
                    hasher.update(chunk)
                    out.write(chunk)
            self._check(digest, hasher.hexdigest())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
