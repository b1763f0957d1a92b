"""Where the artifact store's objects live: a local directory, or an fsspec object store.

Locally, single objects are written to a temporary file, fsynced and renamed under their hash; a
run's output directory is adopted in place (hard links, then one filesystem sync per round by the
caller, see :mod:`runtime.artifacts.durability`). On object stores a single PUT is atomic by itself
(:mod:`runtime.artifacts.s3`, :mod:`runtime.artifacts.fsspec_backend`).
:mod:`runtime.artifacts.store` is the interface; this module is its storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from compiler.content_hash import hash_file
from compiler.errors import MlopsError
from runtime.errors import StorageError

CHUNK = 1 << 20


class ArtifactError(MlopsError):
    """An artifact is missing, malformed or refused."""


class ArtifactCorrupt(ArtifactError):
    """An object's content does not match its hash."""

    @classmethod
    def of(cls, uri: str, path: str, actual: str) -> ArtifactCorrupt:
        error = cls.one(f"artifact corrupt: {uri} ({path}) hashes to sha256:{actual}")
        assert isinstance(error, ArtifactCorrupt)
        return error


class ArtifactMissing(ArtifactError):
    """An artifact the state names is not in the store (or a file of its tree is gone)."""

    @classmethod
    def of(cls, uri: str, path: str | None = None) -> ArtifactMissing:
        error = cls.one(f"artifact missing: {uri}" + (f" ({path})" if path else ""))
        assert isinstance(error, ArtifactMissing)
        return error


class ArtifactStoreUnavailable(StorageError):
    """The artifact store cannot be used at all (no driver, credentials, endpoint or bucket, access denied): not a
    fact about one artifact, so no :class:`ArtifactError` (a plan must not read it as a corrupt artifact)."""

    @classmethod
    def of(cls, url: str, problem: str) -> ArtifactStoreUnavailable:
        error = cls.one(f"artifact store {url}: {problem}")
        assert isinstance(error, ArtifactStoreUnavailable)
        return error

    def __reduce__(self) -> tuple[Any, tuple[str]]:  # crosses Ray's process boundary as its one line
        return _unavailable, ("; ".join(diagnostic.message for diagnostic in self.diagnostics),)


def _unavailable(message: str) -> MlopsError:
    return ArtifactStoreUnavailable.one(message)


@dataclass
class TreeScan:
    """What :func:`scan_tree` found under a directory."""

    files: list[tuple[str, str, int]]
    """(relative POSIX path, absolute path, size) of each file, in the order of
    :func:`compiler.content_hash.hash_path` (by path components)."""
    dirs: list[str]
    """Absolute paths of the subdirectories, parents before children."""
    foreign: bool
    """A symbolic link, or a file with other hard links: something the directory does not own."""


@dataclass(frozen=True)
class StoredObject:
    """One object as the store lists it (for the garbage collector, :mod:`runtime.lifecycle.gc`)."""

    digest: str
    size: int
    written_at: float
    """When it was last written (or linked in), on the store's own clock (:meth:`Backend.clock`)."""


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


def _contents_match(tree: Path, scan: TreeScan, digests: list[str]) -> bool:
    """Whether the files of ``tree`` hash to ``digests`` (one that was tampered with does not)."""
    try:
        return all(hash_file(tree / relative) == digest for (relative, _, _), digest in zip(scan.files, digests,
                                                                                          strict=True))
    except OSError:
        return False


def discard_tree(tree: Path) -> None:
    """Move a torn or corrupt tree out of the way (at once, by a rename) and remove it."""
    torn = tree.with_name(f".torn-{uuid.uuid4().hex}")
    try:
        os.rename(tree, torn)
    except OSError:  # gone already
        return
    remove_tree(torn)


def check(expected: str, actual: str) -> None:
    if actual != expected:
        raise ArtifactCorrupt.one(f"artifact sha256:{expected} is corrupt: its content hashes to {actual}")


def chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


class Backend:
    """Where objects live, addressed by hex digest."""

    def exists(self, digest: str, size: int | None = None) -> bool:
        """Whether the object is there (and, with ``size`` where the backend can tell, of that size)."""
        raise NotImplementedError

    def open_read(self, digest: str) -> IO[bytes]:
        raise NotImplementedError

    def location(self, digest: str) -> str:
        """Where the object is, for messages."""
        raise NotImplementedError

    def intact(self, digest: str, size: int) -> bool:
        """Whether the object is there whole (as far as the backend can tell without the store's help)."""
        return self.exists(digest, size)

    def write_file(self, path: Path) -> str:
        """Store a file's bytes under their hash; returns the hash."""
        raise NotImplementedError

    def write_bytes(self, digest: str, data: bytes) -> None:
        raise NotImplementedError

    def list_objects(self) -> Iterator[StoredObject]:
        """Every object stored (temporary files of writers in flight excluded)."""
        raise NotImplementedError

    def delete(self, digests: list[str]) -> None:
        """Remove these objects; one already gone is no error. Each goes at once (no half-removed object)."""
        raise NotImplementedError

    def clock(self) -> float:
        """Now, on the clock that stamps :attr:`StoredObject.written_at`."""
        return time.time()

    def usage(self, folder: str) -> int:
        """Bytes stored under ``<root>/<folder>`` (0 when there is no such folder)."""
        raise NotImplementedError


def is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class LocalBackend(Backend):
    """Objects under ``<root>/objects/<hex[:2]>/<hex[2:]>``, directory trees under ``<root>/trees/<hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"

    def object_path(self, digest: str) -> Path:
        return Path(self.object_file(digest))

    def location(self, digest: str) -> str:
        return self.object_file(digest)

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
        check(digest, self._write(lambda out: out.write(data), hasher))

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
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:  # name the store
                exc.filename = str(self.objects)
            raise
        fsync_path(final.parent)
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
        digests = [hash_file(absolute) for _, absolute, _ in scan.files]
        for (_, absolute, size), digest in zip(scan.files, digests, strict=True):
            os.chmod(absolute, 0o444)
            self._name(absolute, digest, size, link=True)
        manifest = b"".join(relative.encode() + b"\0" + digest.encode() + b"\n"
                            for (relative, _, _), digest in zip(scan.files, digests, strict=True))
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        if not self.exists(manifest_digest, len(manifest)) or hash_file(self.object_file(manifest_digest)) != \
                manifest_digest:
            pending = self._temp_file(manifest)
            try:
                self._name(pending, manifest_digest, len(manifest), link=False)
            except BaseException:
                Path(pending).unlink(missing_ok=True)
                raise
        for directory in reversed(scan.dirs):  # deepest first
            os.chmod(directory, 0o555)
        os.chmod(path, 0o555)
        self._place_tree(path, manifest_digest, scan, digests)
        return manifest_digest

    def _place_tree(self, path: Path, digest: str, scan: TreeScan, digests: list[str]) -> None:
        """Rename ``path`` to ``trees/<digest>``; an intact tree already there stays and ``path`` goes."""
        tree = self.root / "trees" / digest
        try:
            os.rename(path, tree)
            return
        except FileNotFoundError:
            tree.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # the tree exists already: the same content, made earlier, unless a power loss tore it
            if _sizes_match(tree, scan) and _contents_match(tree, scan, digests):
                remove_tree(path)
                return
            discard_tree(tree)
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
        except FileExistsError:  # stored before: the same content under the same name, unless torn or tampered with
            if os.stat(final).st_size != size or hash_file(final) != digest:
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

    def list_objects(self) -> Iterator[StoredObject]:
        """Each object's size and the later of its mtime and ctime (a hard link made into ``objects`` changes the
        ctime, so an old file a run adopted just now counts as written now)."""
        try:
            prefixes = sorted(e.name for e in os.scandir(self.objects) if len(e.name) == 2 and e.is_dir())
        except FileNotFoundError:
            return
        for prefix in prefixes:
            with os.scandir(f"{self.objects}/{prefix}") as entries:
                for entry in entries:
                    digest = prefix + entry.name
                    if not is_digest(digest) or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed meanwhile
                        continue
                    yield StoredObject(digest, info.st_size, max(info.st_mtime, info.st_ctime))

    def delete(self, digests: list[str]) -> None:
        """For each: its tree first (when it is a directory's manifest: the tree's hard links would keep the
        files' bytes), then the object, then what :mod:`~runtime.artifacts.verify` remembered of it."""
        for digest in digests:
            tree = self.root / "trees" / digest
            if tree.is_dir():
                discard_tree(tree)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.object_file(digest))
            for marker in (digest, f"dir-{digest}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.root}/verified/{marker}")

    def clock(self) -> float:
        """The filesystem's own time (a probe file's ctime): what the objects' ctimes are compared with."""
        if not self.objects.is_dir():  # nothing stored yet: nothing to compare with
            return time.time()
        probe = self.root / "tmp" / f".clock-{uuid.uuid4().hex}"
        probe.parent.mkdir(exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return os.fstat(fd).st_ctime
        finally:
            os.close(fd)
            os.unlink(probe)

    def usage(self, folder: str) -> int:
        total = 0
        for directory, _, names in os.walk(self.root / folder):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total

    def cleanup_temp(self, older_than_s: float) -> int:
        """Remove what crashed writers left: temporary objects, scratch runs and clock probes older than
        ``older_than_s``, and trees a killed process was discarding (``trees/.torn-*``, garbage at any age)."""
        cutoff = time.time() - older_than_s
        removed = 0
        trees = self.root / "trees"
        for torn in trees.glob(".torn-*") if trees.is_dir() else []:
            remove_tree(torn)
            removed += 1
        for tmp in self.objects.glob(".tmp-*") if self.objects.is_dir() else []:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
                removed += 1
        scratch = self.root / "tmp"
        for run in scratch.glob("run-*") if scratch.is_dir() else []:
            if run.stat().st_mtime < cutoff:
                remove_tree(run)
                removed += 1
        for probe in scratch.glob(".clock-*") if scratch.is_dir() else []:  # a :meth:`clock` killed midway
            if probe.stat().st_mtime < cutoff:
                probe.unlink(missing_ok=True)
                removed += 1
        return removed


def _copy_hashing(source: IO[bytes], out: IO[bytes], hasher: hashlib._Hash) -> None:
    for chunk in chunks(source):
        hasher.update(chunk)
        out.write(chunk)


def fsync_path(path: str | Path) -> None:
    """fsync a file, or a directory (which makes the names in it durable)."""
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
