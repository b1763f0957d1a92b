"""The content-addressed artifact store: local, memory:// and S3 (SeaweedFS on loopback) backends, atomic writes,
corruption, safe model loading. S3's own guarantees: tests/test_artifacts_s3.py."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any

import pytest
import torch

from compiler.content_hash import hash_path
from runtime.artifacts import backends as artifact_backends
from runtime.artifacts import store as artifacts
from runtime.artifacts.store import ArtifactCorrupt, ArtifactError, ArtifactStore


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _objects(store_root: Path) -> list[Path]:
    return [p for p in (store_root / "objects").rglob("*") if p.is_file()]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for relative, content in {"a.csv": b"x\n1\n", "sub/b.bin": bytes(range(256)) * 10, "a-c.txt": b"same",
                              "sub/deeper/c.txt": b"same", "z.txt": b""}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    if request.param == "s3":  # a real S3 server (SeaweedFS) on loopback, started once per test process
        return ArtifactStore(request.getfixturevalue("s3_url"))
    return ArtifactStore(f"memory://test-{uuid.uuid4().hex}")


# --- every backend ----------------------------------------------------------------------------------

def test_files_and_bytes_round_trip_under_their_sha256(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(3 << 20))  # several chunks
    uri = store.put_file(source)
    assert uri == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.exists(uri)
    assert store.get_file(uri, tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert store.put_bytes(source.read_bytes()) == uri
    assert store.read_bytes(store.put_bytes(b"log line\n")) == b"log line\n"
    assert not store.exists("sha256:" + "0" * 64)


def test_a_directory_uri_is_its_content_hash_and_materializes_identically(store: ArtifactStore, data_dir: Path,
                                                                          tmp_path: Path) -> None:
    uri = store.put_dir(data_dir)
    assert uri == "dir:sha256:" + hash_path(data_dir)
    assert store.exists(uri)
    dest = store.materialize_dir(uri, tmp_path / "restored")
    assert _tree(dest) == _tree(data_dir)
    with pytest.raises(ArtifactError, match="not an empty directory"):
        store.materialize_dir(uri, dest)
    (tmp_path / "empty").mkdir()
    assert _tree(store.materialize_dir(uri, tmp_path / "empty")) == _tree(data_dir)


def test_uris_of_the_wrong_kind_or_shape_are_refused(store: ArtifactStore, data_dir: Path, tmp_path: Path) -> None:
    dir_uri = store.put_dir(data_dir)
    file_uri = store.put_file(data_dir / "a.csv")
    with pytest.raises(ArtifactError, match="is a directory"):
        store.get_file(dir_uri, tmp_path / "x")
    with pytest.raises(ArtifactError, match="is a file"):
        store.materialize_dir(file_uri, tmp_path / "y")
    for bad in ("md5:abc", "sha256:xyz", "/etc/passwd", "sha256:" + "A" * 64):
        with pytest.raises(ArtifactError, match="not an artifact URI"):
            store.exists(bad)


def test_a_missing_object_is_an_error(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not in"):
        store.get_file("sha256:" + "1" * 64, tmp_path / "x")


def test_models_round_trip_as_state_dicts(store: ArtifactStore) -> None:
    weight = torch.randn(3, 4)
    state = {"linear.weight": weight, "linear.bias": torch.zeros(3), "meta": {"epochs": 2}}
    uri = store.save_model(state)
    loaded = store.load_model(uri)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["linear.weight"], weight) and loaded["meta"] == {"epochs": 2}
    listed = io.BytesIO()
    torch.save([torch.ones(1)], listed)  # written by something other than save_model, which refuses a list
    with pytest.raises(ArtifactError, match="not a state dict"):
        store.load_model(store.put_bytes(listed.getvalue()))


def test_save_model_refuses_a_module_and_anything_but_a_state_dict_of_tensors(store: ArtifactStore) -> None:
    import numpy as np

    for refused, reason in [
        (torch.nn.Linear(2, 1), "it is a torch.nn.Module (Linear), not its weights: store model.state_dict()"),
        ([torch.ones(1)], "a model must be a state dict (a mapping of names to tensors, e.g. model.state_dict()), "
                          "got a list"),
        ("/etc/passwd", "a model must be a state dict"),
        ({"layer": torch.nn.Linear(2, 1)}, "model['layer'] is a torch.nn.Module (Linear)"),
        ({"w": np.ones(2)}, "model['w'] is a numpy.ndarray, not a tensor or a plain value (convert it with "
                            "torch.from_numpy)"),
        ({"meta": {"fn": len}}, "model['meta']['fn'] is a builtin_function_or_method"),  # print: Ray patches it
    ]:
        with pytest.raises(ArtifactError) as caught:
            store.save_model(refused)  # type: ignore[arg-type]
        assert f"refusing to save the model: {reason}" in str(caught.value)
        assert "\n" not in str(caught.value)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1).state_dict()
    for accepted in ({"w": 1.0}, torch.nn.Linear(2, 1).state_dict(), {"opt": optimizer, "shape": torch.Size([2])}):
        assert set(store.load_model(store.save_model(accepted))) == set(accepted)


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for arbitrary code in a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_a_model_that_would_unpickle_code_is_refused_and_the_code_never_runs(store: ArtifactStore,
                                                                              tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(2), "trap": _RunsCode(marker)}, buffer)
    uri = store.put_bytes(buffer.getvalue())
    with pytest.raises(ArtifactError, match="could run code .*unsupported GLOBAL posix.mkdir"):
        store.load_model(uri)
    assert not marker.exists()
    torch.load(io.BytesIO(store.read_bytes(uri)), weights_only=False)  # the control: a plain load runs it
    assert marker.exists()


# --- corruption -------------------------------------------------------------------------------------

def _corrupt(store: ArtifactStore, uri: str, data: bytes) -> None:
    _, digest = artifacts.parse_uri(uri)
    if store.root.startswith("s3://"):  # written straight into the bucket, by another client than the store's
        import s3fs

        key = store.root.removeprefix("s3://") + f"/objects/{digest[:2]}/{digest[2:]}"
        s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(key, data)
        return
    if store.root.startswith("memory://"):
        backend: Any = store._backend
        backend.fs.pipe_file(backend.key(digest), data)
        return
    path = Path(store.root) / "objects" / digest[:2] / digest[2:]
    path.chmod(0o644)
    path.write_bytes(data)


def test_a_corrupt_object_is_an_error_on_every_checked_read(store: ArtifactStore, data_dir: Path,
                                                            tmp_path: Path) -> None:
    uri = store.put_file(data_dir / "sub" / "b.bin")
    dir_uri = store.put_dir(data_dir)
    _corrupt(store, uri, b"\xff" * 2560)  # same size, other bytes
    dest = tmp_path / "out.bin"
    with pytest.raises(ArtifactCorrupt, match=f"artifact corrupt: {uri} \\(.*objects/.*\\) hashes to sha256:"):
        store.get_file(uri, dest)
    assert not dest.exists() and list(tmp_path.glob(".out.bin.tmp-*")) == []
    with pytest.raises(ArtifactCorrupt):
        store.read_bytes(uri)
    with pytest.raises(ArtifactCorrupt):
        store.verify(dir_uri)
    with pytest.raises(ArtifactCorrupt):
        store.materialize_dir(dir_uri, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    if not store.root.startswith("memory://"):  # locally and on S3, storing it again repairs it
        assert store.put_file(data_dir / "sub" / "b.bin") == uri
        store.verify(dir_uri)


def test_a_manifest_escaping_its_directory_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    evil = store.put_bytes(b"../escaped\0" + hashlib.sha256(b"x").hexdigest().encode() + b"\n")
    store.put_bytes(b"x")
    with pytest.raises(ArtifactError, match="not a valid directory manifest"):
        store.materialize_dir("dir:" + evil, tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest" / "escaped").exists()


# --- local backend ----------------------------------------------------------------------------------

def test_a_relative_root_is_resolved_against_the_base_dir(tmp_path: Path) -> None:
    store = ArtifactStore(".mlops/artifacts", base_dir=tmp_path)
    assert store.root == str(tmp_path / ".mlops" / "artifacts")
    assert ArtifactStore("file://" + str(tmp_path / "abs")).root == str(tmp_path / "abs")


def test_local_objects_are_read_only_files_laid_out_by_hash(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    uri = store.put_bytes(b"hello")
    digest = uri.removeprefix("sha256:")
    path = store.local_path(uri)
    assert path == tmp_path / "a" / "objects" / digest[:2] / digest[2:]
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert _objects(tmp_path / "a") == [path]  # no temporary file left behind
    assert store.local_path("sha256:" + "2" * 64) is None
    assert ArtifactStore(f"memory://x-{uuid.uuid4().hex}").local_path(uri) is None


def test_local_path_of_a_directory_is_a_read_only_tree_of_hard_links(tmp_path: Path, data_dir: Path) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    uri = store.put_dir(data_dir)
    tree = store.local_path(uri)
    assert tree is not None and _tree(tree) == _tree(data_dir)
    objects = {p.stat().st_ino for p in _objects(tmp_path / "a")}
    assert all(p.stat().st_ino in objects for p in tree.rglob("*") if p.is_file())  # no copies
    assert stat.S_IMODE(tree.stat().st_mode) == 0o555
    assert store.local_path(uri) == tree  # made once


def test_a_write_that_fails_midway_leaves_nothing_under_a_final_name(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 << 20))

    def fail_halfway(src: IO[bytes], out: IO[bytes], hasher: Any) -> None:
        out.write(src.read(1 << 20))
        raise OSError("disk full")

    monkeypatch.setattr(artifact_backends, "_copy_hashing", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        store.put_file(source)
    assert _objects(tmp_path / "a") == []
    monkeypatch.undo()
    assert store.read_bytes(store.put_file(source)) == source.read_bytes()


def test_a_writer_killed_midway_leaves_only_a_temporary_file(tmp_path: Path) -> None:
    root = tmp_path / "a"
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 << 20))
    code = f"""
import os, signal
from runtime.artifacts import backends as artifact_backends

def die_halfway(src, out, hasher):
    out.write(src.read(1 << 20)); out.flush()
    os.kill(os.getpid(), signal.SIGKILL)

artifact_backends._copy_hashing = die_halfway
from runtime.artifacts.store import ArtifactStore
ArtifactStore({str(root)!r}).put_file({str(source)!r})
"""
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    objects = _objects(root)
    assert [p.name.startswith(".tmp-") for p in objects] == [True]  # nothing under a hash name
    store = ArtifactStore(str(root))
    uri = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert not store.exists(uri)
    assert store.cleanup_temp(older_than_s=0) == 1
    assert store.put_file(source) == uri and store.exists(uri)


def test_a_known_hash_skips_rewriting_a_stored_object_and_checks_a_new_one(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    source = tmp_path / "f"
    source.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    uri = store.put_file(source, sha256=digest)
    mtime = store.local_path(uri).stat().st_mtime_ns  # type: ignore[union-attr]
    assert store.put_file(source, sha256=digest) == uri
    assert store.local_path(uri).stat().st_mtime_ns == mtime  # type: ignore[union-attr]
    with pytest.raises(ArtifactError, match="changed while it was stored"):
        store.put_file(source, sha256="0" * 64)


def test_bytes_that_are_not_a_torch_file_are_refused_as_a_model(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactError, match="refusing to load model .*not a plain weights file"):
        store.load_model(store.put_bytes(b"not a zip archive at all"))


def _scratch_copy(store: ArtifactStore, data_dir: Path) -> Path:
    scratch = store.scratch_dir()
    assert scratch is not None and scratch.is_relative_to(Path(store.root))
    for path in data_dir.rglob("*"):
        if path.is_file():
            target = scratch / "out" / path.relative_to(data_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return scratch / "out"


def test_an_adopted_output_directory_becomes_its_objects_and_tree_without_copies(tmp_path: Path,
                                                                                  data_dir: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    out = _scratch_copy(store, data_dir)
    inode = (out / "a.csv").stat().st_ino
    uri = store.adopt_dir(out)
    assert uri == f"dir:sha256:{hash_path(data_dir)}" == ArtifactStore(tmp_path / "other").put_dir(data_dir)
    assert not out.exists()
    tree = store.local_path(uri)
    assert tree is not None and _tree(tree) == _tree(data_dir)
    assert (tree / "a.csv").stat().st_ino == inode  # linked, not copied
    assert not (tree / "a.csv").stat().st_mode & 0o222
    for path in _objects(tmp_path / "store"):
        store.verify(artifacts.file_uri(path.parent.name + path.name))
    again = _scratch_copy(store, data_dir)  # the same content once more: the first tree stays, this one goes
    assert store.adopt_dir(again) == uri and not again.exists()


def test_adopting_copies_files_the_run_does_not_own(tmp_path: Path, data_dir: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    outside = tmp_path / "user-file.txt"
    outside.write_text("the user's own file")
    linked = _scratch_copy(store, data_dir)
    os.link(outside, linked / "hard.txt")
    symlinked = _scratch_copy(store, data_dir)
    (symlinked / "soft.txt").symlink_to(outside)
    for out in (linked, symlinked):
        uri = store.adopt_dir(out)
        tree = store.local_path(uri)
        assert tree is not None and (tree / ("hard.txt" if out is linked else "soft.txt")).read_text() == \
            "the user's own file"
    assert outside.stat().st_mode & stat.S_IWUSR  # never made read-only, never became an object itself
    assert all(p.stat().st_ino != outside.stat().st_ino for p in _objects(tmp_path / "store"))


def test_adopting_orders_files_as_the_content_hash_does(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    out = store.scratch_dir()
    assert out is not None
    for relative in ("sub/b.txt", "sub-x.txt", "sub.y/c.txt", "a/b/c.txt", "a-b.txt", "A.txt"):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(relative)
    copy = tmp_path / "copy"
    for path in out.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(out)).write_bytes(path.read_bytes())
    assert store.adopt_dir(out) == f"dir:sha256:{hash_path(copy)}"


def _tear(path: Path) -> None:
    """What a power loss can leave of a file whose name reached the disk before its data: nothing."""
    os.chmod(path, 0o644)
    path.write_bytes(b"")
    os.chmod(path, 0o444)


def test_an_artifact_torn_by_a_power_loss_is_replaced_when_its_content_is_stored_again(tmp_path: Path,
                                                                                       data_dir: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    uri = store.adopt_dir(_scratch_copy(store, data_dir))
    tree = store.local_path(uri)
    assert tree is not None
    _tear(tree / "a.csv")  # the tree's file and its object are one inode: both torn
    with pytest.raises(ArtifactCorrupt):
        store.verify(uri)
    assert store.adopt_dir(_scratch_copy(store, data_dir)) == uri
    store.verify(uri)
    tree = store.local_path(uri)
    assert tree is not None and _tree(tree) == _tree(data_dir)
    log = store.put_bytes(b"a log line\n")
    _tear(_objects(tmp_path / "store")[[p.parent.name + p.name for p in _objects(tmp_path / "store")].index(
        log.removeprefix("sha256:"))])
    assert store.put_bytes(b"a log line\n") == log and store.read_bytes(log) == b"a log line\n"
