"""The artifact store: content-addressed files, directories and models, local or on fsspec storage.

URIs name content, not places, so they stay valid wherever the store's root moves:

* ``sha256:<hex>`` — a file whose bytes hash to ``<hex>``;
* ``dir:sha256:<hex>`` — a directory: ``<hex>`` is the hash of its manifest, the sorted lines
  ``<relative path>\\0<file sha256>\\n``, which is exactly what
  :func:`compiler.content_hash.hash_path` digests, so it equals the directory's content hash.

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
directly. Every read that returns content (:meth:`~ArtifactStore.get_file`, :meth:`~ArtifactStore.read_bytes`,
:meth:`~ArtifactStore.materialize_dir`, :meth:`~ArtifactStore.load_model`) checks the hash and
raises :class:`ArtifactCorrupt` on a mismatch. :meth:`~ArtifactStore.local_path` is the zero-copy
path for local readers and does not re-read the content; call :meth:`~ArtifactStore.verify` for that.

Models are saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: an artifact
that would unpickle code (any global outside torch's allow-list) is refused, and the code never runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from compiler.errors import MlopsError
from runtime import durability

CHUNK = 1 << 20
FILE_PREFIX = "sha256:"
DIR_PREFIX = "dir:sha256:"
LOCAL_PROTOCOLS = ("", "file", "local")


class ArtifactError(MlopsError):
    """An artifact is missing, malformed or refused."""


class ArtifactCorrupt(ArtifactError):
    """An object's content does not match its hash."""


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


@dataclass
class TreeScan:
    """What :func:`scan_tree` found under a directory."""

    files: list[tuple[str, str, int]]
    """(relative POSIX path, absolute path, size) of each file, in :func:`_listing`'s order."""
    dirs: list[str]
    """Absolute paths of the subdirectories, parents before children."""
    foreign: bool
    """A symbolic link, or a file with other hard links: something the directory does not own."""


def scan_tree(path: str | Path) -> TreeScan:
    """The files and subdirectories under ``path`` (one ``lstat`` per entry, no :class:`Path` objects)."""
    files: list[tuple[str, str, int]] = []
    dirs: list[str] = []
    foreign = False
    stack = [(str(path), "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                relative = prefix + entry.name
                if entry.is_symlink():
                    foreign = True
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.path)
                    stack.append((entry.path, relative + "/"))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    foreign = foreign or info.st_nlink != 1
                    files.append((relative, entry.path, info.st_size))
    files.sort(key=lambda file: file[0].split("/"))
    dirs.sort(key=lambda directory: directory.count(os.sep))
    return TreeScan(files, dirs, foreign)


def _sizes_match(tree: Path, scan: TreeScan) -> bool:
    """Whether ``tree`` holds the files of ``scan`` at their sizes (a tree torn by a power loss does not)."""
    try:
        return all(os.stat(tree / relative).st_size == size for relative, _, size in scan.files)
    except OSError:
        return False


def _hash_file(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in _chunks(handle):
            hasher.update(chunk)
    return hasher.hexdigest()


def _listing(path: Path) -> list[Path]:
    """The files of a directory in the order :func:`compiler.content_hash.hash_path` uses."""
    return sorted(p for p in path.rglob("*") if p.is_file())


class ArtifactStore:
    """Content-addressed storage under ``root`` (a local directory or an fsspec URL)."""

    def __init__(self, root: str | Path, base_dir: Path | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        text = str(root)
        protocol, _, rest = text.partition("://") if "://" in text else ("", "", text)
        if protocol in LOCAL_PROTOCOLS:
            local = Path(rest).expanduser()
            self.root = str(local if local.is_absolute() else (base_dir or Path.cwd()) / local)
            self._backend: _Backend = _LocalBackend(Path(self.root))
        else:
            self.root = text.rstrip("/")
            self._backend = _FsspecBackend(protocol, text, storage_options or {})

    # --- writing ---------------------------------------------------------------------------------

    def put_file(self, path: Path, sha256: str | None = None) -> str:
        """Store a file; returns ``sha256:<hex>``. With a known ``sha256`` an object already stored is not rewritten."""
        path = Path(path)
        if sha256 is not None and self._backend.exists(sha256, os.stat(path).st_size):
            return file_uri(sha256)
        digest = self._backend.write_file(path)
        if sha256 is not None and digest != sha256:
            raise ArtifactError.one(f"{path} changed while it was stored (expected sha256 {sha256}, got {digest})")
        return file_uri(digest)

    def put_bytes(self, data: bytes) -> str:
        """Store bytes; returns ``sha256:<hex>``."""
        digest = hashlib.sha256(data).hexdigest()
        if not self._backend.exists(digest, len(data)):
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
        if not isinstance(self._backend, _LocalBackend):
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
        if not isinstance(backend, _LocalBackend):
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
        if isinstance(self._backend, _LocalBackend):
            durability.flush_all(self.root)

    def save_model(self, state_dict: dict[str, Any]) -> str:
        """``torch.save`` a state dict to a temporary file and store it; returns ``sha256:<hex>``."""
        import torch

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
        if not isinstance(self._backend, _LocalBackend):
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

    def cleanup_temp(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files a crashed writer left (local storage); returns how many went."""
        return self._backend.cleanup_temp(older_than_s) if isinstance(self._backend, _LocalBackend) else 0

    # --- internals -------------------------------------------------------------------------------

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

    def _read_verified(self, digest: str) -> bytes:
        with self._backend.open_read(digest) as handle:
            data = handle.read()
        _check(digest, hashlib.sha256(data).hexdigest())
        return data

    def _hash_object(self, digest: str) -> None:
        hasher = hashlib.sha256()
        with self._backend.open_read(digest) as handle:
            for chunk in _chunks(handle):
                hasher.update(chunk)
        _check(digest, hasher.hexdigest())

    def _copy_verified(self, digest: str, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
        hasher = hashlib.sha256()
        try:
            with self._backend.open_read(digest) as source, open(tmp, "wb") as out:
                for chunk in _chunks(source):
                    hasher.update(chunk)
                    out.write(chunk)
            _check(digest, hasher.hexdigest())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _check(expected: str, actual: str) -> None:
    if actual != expected:
        raise ArtifactCorrupt.one(f"artifact sha256:{expected} is corrupt: its content hashes to {actual}")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


class _Backend:
    """Where objects live, addressed by hex digest."""

    def exists(self, digest: str, size: int | None = None) -> bool:
        """Whether the object is there (and, with ``size`` where the backend can tell, of that size)."""
        raise NotImplementedError

    def open_read(self, digest: str) -> IO[bytes]:
        raise NotImplementedError

    def write_file(self, path: Path) -> str:
        """Store a file's bytes under their hash; returns the hash."""
        raise NotImplementedError

    def write_bytes(self, digest: str, data: bytes) -> None:
        raise NotImplementedError


class _LocalBackend(_Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"

    def object_path(self, digest: str) -> Path:
        return Path(self.object_file(digest))

    def object_file(self, digest: str) -> str:
        """:meth:`object_path` as a string (the hot paths make no :class:`Path` objects)."""
        return f"{self.objects}/{digest[:2]}/{digest[2:]}"

    def exists(self, digest: str, size: int | None = None) -> bool:
        """Whether the object is there (and, with ``size``, of that size: not torn by a power loss)."""
        try:
            info = os.stat(self.object_file(digest))
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and (size is None or info.st_size == size)

    def open_read(self, digest: str) -> IO[bytes]:
        try:
            return open(self.object_file(digest), "rb")
        except FileNotFoundError:
            raise ArtifactError.one(f"artifact sha256:{digest} is not in {self.root}") from None

    def write_file(self, path: Path) -> str:
        hasher = hashlib.sha256()
        with open(path, "rb") as source:
            return self._write(lambda out: _copy_hashing(source, out, hasher), hasher)

    def write_bytes(self, digest: str, data: bytes) -> None:
        hasher = hashlib.sha256(data)
        _check(digest, self._write(lambda out: out.write(data), hasher))

    def _write(self, fill: Callable[[IO[bytes]], object], hasher: hashlib._Hash) -> str:
        """Write through ``fill`` into a temporary file, then move it under its hash: the atomic step."""
        try:
            fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.objects)
        except FileNotFoundError:  # the first object of a new store
            self.objects.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.objects)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            os.chmod(tmp, 0o444)
            final = self.object_path(digest)
            try:
                os.replace(tmp, final)  # replaces a damaged copy too; equal content otherwise
            except FileNotFoundError:  # the first object under this prefix
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return digest

    def adopt(self, path: Path, scan: TreeScan) -> str:
        """Make a finished directory an artifact in place; returns its manifest's digest.

        The files become their objects (read-only, hard-linked under their hashes), the manifest is
        written beside them and the directory becomes the artifact's tree. Every name appears by an
        atomic link or rename, so a killed process never leaves a partial object. Nothing is flushed
        here: whoever records the artifact first makes a batch of them durable with one
        :meth:`ArtifactStore.sync` (a group commit). An object or tree that a power loss tore before
        that sync is never recorded, and is replaced when the same content is stored again. An
        :class:`OSError` means hard links are refused here.
        """
        digests = [_hash_file(absolute) for _, absolute, _ in scan.files]
        for (_, absolute, size), digest in zip(scan.files, digests, strict=True):
            os.chmod(absolute, 0o444)
            self._name(absolute, digest, size, link=True)
        manifest = b"".join(relative.encode() + b"\0" + digest.encode() + b"\n"
                            for (relative, _, _), digest in zip(scan.files, digests, strict=True))
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        if not self.exists(manifest_digest, len(manifest)):
            pending = self._temp_file(manifest)
            try:
                self._name(pending, manifest_digest, len(manifest), link=False)
            except BaseException:
                Path(pending).unlink(missing_ok=True)
                raise
        for directory in reversed(scan.dirs):  # deepest first
            os.chmod(directory, 0o555)
        os.chmod(path, 0o555)
        self._place_tree(path, manifest_digest, scan)
        return manifest_digest

    def _place_tree(self, path: Path, digest: str, scan: TreeScan) -> None:
        """Rename ``path`` to ``trees/<digest>``; an intact tree already there stays and ``path`` goes."""
        tree = self.root / "trees" / digest
        try:
            os.rename(path, tree)
            return
        except FileNotFoundError:
            tree.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # the tree exists already: the same content, made earlier, unless a power loss tore it
            if _sizes_match(tree, scan):
                remove_tree(path)
                return
            torn = tree.with_name(f".torn-{uuid.uuid4().hex}")
            os.rename(tree, torn)
            remove_tree(torn)
        try:
            os.rename(path, tree)
        except OSError:  # another process placed the same tree meanwhile
            remove_tree(path)

    def _temp_file(self, data: bytes) -> str:
        """``data`` in a new read-only temporary file under ``objects`` (not flushed); returns its path."""
        name = f"{self.objects}/.tmp-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(name, flags, 0o444)
        except FileNotFoundError:  # the first object of a new store
            self.objects.mkdir(parents=True, exist_ok=True)
            fd = os.open(name, flags, 0o444)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return name

    def _name(self, source: str, digest: str, size: int, link: bool) -> None:
        """Give a flushed file its object name (a hard link, or a rename when ``link`` is false). An object
        already there with another size was torn by a crash (names made durable before their data): replaced."""
        final = self.object_file(digest)
        place: Callable[[str, str], None] = os.link if link else os.replace
        try:
            place(source, final)
        except FileNotFoundError:  # the first object under this prefix
            os.makedirs(os.path.dirname(final), exist_ok=True)
            place(source, final)
        except FileExistsError:  # stored before: the same content under the same name, unless torn
            if os.stat(final).st_size != size:
                spare = f"{os.path.dirname(final)}/.tmp-{uuid.uuid4().hex}"
                os.link(source, spare)
                os.replace(spare, final)

    def tree(self, digest: str, entries: list[tuple[str, str]]) -> Path:
        """``<root>/trees/<digest>``: the directory as read-only hard links to its objects, made once."""
        tree = self.root / "trees" / digest
        if tree.is_dir():
            return tree
        tree.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.tmp-", dir=tree.parent))
        try:
            for relative, file_digest in entries:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                source = self.object_path(file_digest)
                if not source.is_file():
                    raise ArtifactError.one(f"artifact sha256:{file_digest} is not in {self.root}")
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
                    os.chmod(target, 0o444)
            for directory in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
                os.chmod(directory, 0o555)
            os.chmod(staging, 0o555)
            try:
                os.rename(staging, tree)
            except OSError:  # another process made it first
                if not tree.is_dir():
                    raise
                remove_tree(staging)
        except BaseException:
            remove_tree(staging)
            raise
        return tree

    def cleanup_temp(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.objects.glob(".tmp-*") if self.objects.is_dir() else []:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
                removed += 1
        scratch = self.root / "tmp"
        for run in scratch.glob("run-*") if scratch.is_dir() else []:
            if run.stat().st_mtime < cutoff:
                remove_tree(run)
                removed += 1
        return removed


class _FsspecBackend(_Backend):
    def __init__(self, protocol: str, root: str, options: dict[str, Any]) -> None:
        import fsspec

        self.fs = fsspec.filesystem(protocol, **options)
        self.base = str(self.fs._strip_protocol(root)).rstrip("/")

    def key(self, digest: str) -> str:
        return f"{self.base}/objects/{digest[:2]}/{digest[2:]}"

    def exists(self, digest: str, size: int | None = None) -> bool:
        return bool(self.fs.exists(self.key(digest)))  # a PUT is atomic: an object there is whole

    def open_read(self, digest: str) -> IO[bytes]:
        try:
            return self.fs.open(self.key(digest), "rb")
        except FileNotFoundError:
            raise ArtifactError.one(f"artifact sha256:{digest} is not in {self.base}") from None

    def write_file(self, path: Path) -> str:
        hasher = hashlib.sha256()
        with open(path, "rb") as source:
            for chunk in _chunks(source):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        if not self.exists(digest):
            self.fs.put_file(str(path), self.key(digest))  # one PUT: visible only once complete
        return digest

    def write_bytes(self, digest: str, data: bytes) -> None:
        self.fs.pipe_file(self.key(digest), data)


def _copy_hashing(source: IO[bytes], out: IO[bytes], hasher: hashlib._Hash) -> None:
    for chunk in _chunks(source):
        hasher.update(chunk)
        out.write(chunk)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a directory even when its subdirectories were made read-only."""
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir())] if path.is_dir() else []:
        os.chmod(directory, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
