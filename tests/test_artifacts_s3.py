"""Artifacts on S3, against a real S3 server on loopback (SeaweedFS, tests/s3_server.py): content addressing,
no half-written object ever visible, conditional writes, verification on read, one-line errors, and an
``mlops apply`` whose artifacts all live in the bucket."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.artifacts import s3 as s3_backend
from runtime.artifacts.store import ArtifactCorrupt, ArtifactStore, ArtifactStoreUnavailable, parse_uri

ROOT = Path(__file__).resolve().parents[1]
ONE_TRY = {"retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}}
"""s3fs and botocore options that give up at the first failure (a cut upload fails fast)."""


def _key(url: str, uri: str) -> str:
    """``bucket/prefix/objects/..`` of an artifact's object, as a direct client names it."""
    _, digest = parse_uri(uri)
    return url.removeprefix("s3://") + f"/objects/{digest[:2]}/{digest[2:]}"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_files_directories_and_models_round_trip_through_the_bucket(s3_url: str, seaweedfs: Any,
                                                                    tmp_path: Path) -> None:
    store = ArtifactStore(s3_url)
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(3 << 20))
    data = tmp_path / "data"
    for relative, content in {"a.csv": b"x\n1\n", "sub/b.bin": bytes(range(256)) * 10, "empty.txt": b""}.items():
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        (data / relative).write_bytes(content)
    file_uri = store.put_file(source)
    dir_uri = store.put_dir(data)
    model_uri = store.save_model({"w": torch.arange(4.0), "meta": {"epochs": 2}})

    client = seaweedfs.client()
    head = client.call_s3("head_object", Bucket=seaweedfs.bucket, Key=_key(s3_url, file_uri).split("/", 1)[1],
                          ChecksumMode="ENABLED")
    digest = parse_uri(file_uri)[1]
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(digest)).decode()  # the store checked the body
    assert client.cat_file(_key(s3_url, file_uri)) == source.read_bytes()

    other = ArtifactStore(s3_url)  # another process or machine: nothing but the URL in common
    assert other.local_path(file_uri) is None and other.verified_path(file_uri) is None
    assert other.scratch_dir() is None
    assert other.get_file(file_uri, tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert _tree(other.materialize_dir(dir_uri, tmp_path / "restored")) == _tree(data)
    loaded = other.load_model(model_uri)
    assert torch.equal(loaded["w"], torch.arange(4.0)) and loaded["meta"] == {"epochs": 2}
    assert other.exists(dir_uri) and other.exists(model_uri)
    other.verify(dir_uri)
    assert other.put_file(source, sha256=digest) == file_uri  # known and intact: not sent again
    assert other.put_dir(data) == dir_uri


def test_a_tampered_or_truncated_object_is_refused_in_one_line_naming_it_and_storing_it_again_repairs_it(
        s3_url: str, seaweedfs: Any, tmp_path: Path) -> None:
    store = ArtifactStore(s3_url)
    data = tmp_path / "data"
    data.mkdir()
    (data / "raw.csv").write_bytes(b"x\n1\n2\n")
    dir_uri = store.put_dir(data)
    file_uri = store.put_file(data / "raw.csv")
    model_uri = store.save_model({"w": torch.ones(2)})
    client = seaweedfs.client()
    location = "s3://" + _key(s3_url, file_uri)

    for tampered in (b"x\n9\n9\n", b"x\n1\n"):  # other bytes of the same size; a truncated copy
        client.pipe_file(_key(s3_url, file_uri), tampered)  # straight into the bucket, not through the store
        actual = hashlib.sha256(tampered).hexdigest()
        for read in (lambda: store.read_bytes(file_uri), lambda: store.get_file(file_uri, tmp_path / "copy.csv"),
                     lambda: store.materialize_dir(dir_uri, tmp_path / "restored"), lambda: store.verify(dir_uri)):
            with pytest.raises(ArtifactCorrupt) as caught:
                read()
            assert str(caught.value) == f"error: artifact corrupt: {file_uri} ({location}) hashes to sha256:{actual}"
        assert not (tmp_path / "copy.csv").exists() and not (tmp_path / "restored").exists()
        assert list(tmp_path.glob(".*tmp-*")) == []
    assert store.put_dir(data) == dir_uri  # the damaged object is written again (unconditionally)
    assert _tree(store.materialize_dir(dir_uri, tmp_path / "restored")) == _tree(data)

    buffer = torch.nn.Linear(2, 1).state_dict()
    other = tmp_path / "other.pt"
    torch.save(buffer, other)
    client.put_file(str(other), _key(s3_url, model_uri))  # another valid model under the recorded name
    with pytest.raises(ArtifactCorrupt, match=f"artifact corrupt: {model_uri} "):
        store.load_model(model_uri)


class Proxy:
    """A TCP proxy on loopback in front of the S3 server that, once ``limit`` bytes went towards the server (over
    all its connections), either cuts every connection that sends more (``hold=False``: a writer killed or the
    network lost mid-upload) or stalls them until :meth:`release` (an upload still in flight)."""

    def __init__(self, port: int, limit: int, hold: bool) -> None:
        self.target = port
        self.limit = limit
        self.hold = hold
        self.released = threading.Event()
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.sent = 0
        """Bytes sent towards the server so far, over every connection."""
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upload: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                with self.lock:
                    cut = self.limit - self.sent if upload else len(chunk)
                    self.sent += len(chunk) if upload else 0
                if cut < len(chunk):
                    sink.sendall(chunk[:max(cut, 0)])
                    if not self.hold:
                        raise ConnectionResetError  # cut: the server has part of the body and no more
                    self.stalled.set()
                    self.released.wait(60)
                    sink.sendall(chunk[max(cut, 0):])
                    continue
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                end.close()  # an abrupt close (RST)

    def release(self) -> None:
        with self.lock:
            self.limit = 1 << 62
        self.released.set()

    def close(self) -> None:
        self.listener.close()
        for end in self.sockets:
            with contextlib.suppress(OSError):
                end.close()


@pytest.mark.parametrize("multipart", [False, True], ids=["put", "multipart"])
def test_an_upload_cut_midway_leaves_nothing_visible(s3_url: str, seaweedfs: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, multipart: bool) -> None:
    if multipart:  # small parts, so that a few MiB make a multipart upload
        monkeypatch.setattr(s3_backend, "MULTIPART_CHUNK", 5 << 20)
        monkeypatch.setattr(s3_backend, "SINGLE_PUT_MAX", 6 << 20)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 << 20))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    proxy = Proxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), limit=(7 << 20) if multipart else (1 << 20), hold=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    try:
        with pytest.raises(ArtifactStoreUnavailable) as caught:
            ArtifactStore(s3_url, storage_options=ONE_TRY).put_file(source)
    finally:
        proxy.close()
    message = str(caught.value)
    assert message.startswith(f"error: artifact store {s3_url}: the connection to http://127.0.0.1:{proxy.port} "
                              "was lost during ") and "\n" not in message
    client = seaweedfs.client()
    key = _key(s3_url, f"sha256:{digest}")
    assert not client.exists(key)
    assert client.find(s3_url.removeprefix("s3://")) == []  # nothing under the prefix, not even a part
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    store = ArtifactStore(s3_url)
    assert store.put_file(source) == f"sha256:{digest}"  # the same content, stored whole this time
    assert store.read_bytes(f"sha256:{digest}") == source.read_bytes()


def test_an_object_is_not_visible_while_its_upload_is_in_flight(s3_url: str, seaweedfs: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 << 20))
    uri = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    proxy = Proxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]), limit=2 << 20, hold=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    store = ArtifactStore(s3_url)
    stored: list[str] = []
    writer = threading.Thread(target=lambda: stored.append(store.put_file(source)))
    writer.start()
    try:
        assert proxy.stalled.wait(60), "the upload never reached the proxy"
        client = seaweedfs.client()
        assert not client.exists(_key(s3_url, uri))  # half of the body is on the server: nothing under the name
        assert client.find(s3_url.removeprefix("s3://")) == []
    finally:
        proxy.release()
        writer.join(60)
        proxy.close()
    assert stored == [uri]
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    assert ArtifactStore(s3_url).read_bytes(uri) == source.read_bytes()


def test_conditional_writes_never_replace_an_object_and_a_body_must_match_its_checksum(
        s3_url: str, seaweedfs: Any, tmp_path: Path) -> None:
    store = ArtifactStore(s3_url)
    backend: Any = store._backend
    uri = store.put_bytes(b"the real content\n")
    digest = parse_uri(uri)[1]
    key = backend.key(digest)
    raw = {"Bucket": seaweedfs.bucket, "Key": key, "Body": b"another writer's body"}
    with pytest.raises(s3_backend._Conflict):  # If-None-Match: * (SeaweedFS answers 412)
        backend._call("put_object", IfNoneMatch="*", **raw)
    assert store.read_bytes(uri) == b"the real content\n"
    missing = "0" * 64
    with pytest.raises(ArtifactStoreUnavailable, match="put_object"):  # a body not hashing to its checksum
        backend._call("put_object", **{**raw, "Key": backend.key(missing)}, ChecksumSHA256=s3_backend._b64(missing))
    assert not backend.exists(missing)

    source = tmp_path / "shared.bin"
    source.write_bytes(os.urandom(1 << 20))
    conflicts: list[str] = []
    put = s3_backend.S3Backend._put

    def counting(self: Any, digest: str, data: bytes, conditional: bool) -> None:
        try:
            put(self, digest, data, conditional)
        except s3_backend._Conflict:
            conflicts.append(digest)
            raise

    s3_backend.S3Backend._put = counting  # type: ignore[method-assign]
    try:
        results: list[str] = []
        barrier = threading.Barrier(6)

        def writer() -> None:
            other = ArtifactStore(s3_url)
            other._backend._ready()  # type: ignore[attr-defined]
            barrier.wait()
            results.append(other.put_file(source))

        threads = [threading.Thread(target=writer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        s3_backend.S3Backend._put = put  # type: ignore[method-assign]
    assert len(results) == 6 and len(set(results)) == 1
    assert store.read_bytes(results[0]) == source.read_bytes()
    print(f"{len(conflicts)} of 6 concurrent writers found the object taken (412)")


def test_a_store_without_conditional_writes_is_written_to_without_them(s3_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    store = ArtifactStore(s3_url)
    backend: Any = store._backend
    real = backend.fs.call_s3

    def no_conditions(method: str, **kwargs: Any) -> Any:  # as a store that does not implement If-None-Match
        if "IfNoneMatch" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "A header you provided implies "
                                         "functionality that is not implemented"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, method)
        return real(method, **kwargs)

    monkeypatch.setattr(backend.fs, "call_s3", no_conditions)
    uri = store.put_bytes(b"written plainly\n")
    assert not backend.conditional_writes
    assert store.put_bytes(b"and again\n") != uri
    assert store.read_bytes(uri) == b"written plainly\n"


def test_a_store_that_cannot_be_used_is_one_line_naming_its_url(s3_url: str, seaweedfs: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "sha256:" + "1" * 64

    def refusal(url: str, **env: str | None) -> str:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            with pytest.raises(ArtifactStoreUnavailable) as caught:
                ArtifactStore(url, storage_options=ONE_TRY).exists(uri)
        message = caught.value.diagnostics[0].message
        assert message.startswith(f"artifact store {url.rstrip('/') if url != 's3://' else url}: ")
        assert "\n" not in str(caught.value)
        return message

    bucketless = f"s3://no-such-bucket-{os.getpid()}/x"
    assert refusal(bucketless).endswith(f"bucket 'no-such-bucket-{os.getpid()}' does not exist at "
                                        f"{seaweedfs.endpoint}")
    assert "access denied" in refusal(s3_url, AWS_SECRET_ACCESS_KEY="wrong")
    assert "no S3 credentials" in refusal(s3_url, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                                          AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                                          AWS_EC2_METADATA_DISABLED="true")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    assert "cannot reach the S3 endpoint" in refusal(s3_url, AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed}")
    assert "names no bucket" in refusal("s3://")
    error = ArtifactStoreUnavailable.of(s3_url, "gone")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # crosses Ray's process boundary intact


def test_apply_keeps_every_artifact_in_the_bucket(s3_url: str, seaweedfs: Any, tmp_path: Path,
                                                  make_project: Any) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "s3demo", "storage": {"artifacts": s3_url},
            "datasets": {"raw": {"path": "data/raw.csv"},
                         "features": {"from": ["raw"], "transform": "pipeline:build_features"}}}
    spec_path = make_project(tmp_path / "repo", spec, files={"data/raw.csv": "x\n1\n2\n"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the AWS_* variables of s3_url included

    def mlops(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec_path), *args],
                              cwd=spec_path.parent, capture_output=True, text=True, env=env, timeout=timeout)

    applied = mlops("--json", "apply")
    assert applied.returncode == 0, applied.stderr[-3000:]
    outcomes = json.loads(applied.stdout)["outcomes"]
    assert {node: outcome["status"] for node, outcome in outcomes.items()} == {
        "datasets.raw/snapshot": "succeeded", "datasets.features/transform": "succeeded"}
    assert not (spec_path.parent / ".mlops" / "artifacts").exists()  # nothing on the driver's disk

    from compiler import load_project
    from runtime.apply.operations import opened

    with opened(load_project(spec_path)) as (_, state):
        features = state.latest_result("datasets.features/transform")
    assert features is not None
    uri = features.outputs["artifact"]
    restored = ArtifactStore(s3_url).materialize_dir(uri, tmp_path / "features")
    assert _tree(restored) == {"raw.csv": b"x\n1\n2\n"}
    assert seaweedfs.client().exists(_key(s3_url, uri))

    planned = mlops("plan")
    assert planned.returncode == 0 and "No changes" in planned.stdout, planned.stdout + planned.stderr
    spec_path.write_text(spec_path.read_text().replace(s3_url, f"s3://no-such-bucket-{os.getpid()}/p"))
    refused = mlops("plan")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (f"error: artifact store s3://no-such-bucket-{os.getpid()}/p: bucket "
                                      f"'no-such-bucket-{os.getpid()}' does not exist at {seaweedfs.endpoint}")


def test_the_inference_log_of_replicas_on_other_machines_goes_to_the_object_store(s3_url: str) -> None:
    """With S3 artifacts a replica may run where the driver's disk is not: each flush is an object under
    ``<artifact root>/inference/<deployment>/``, and the monitors and ``mlops logs`` read them back."""
    from runtime.monitor.inference_log import (
        ErrorRecord,
        InferenceRecord,
        InferenceWriter,
        error_dir,
        log_dir,
        read,
        read_errors,
        write_error,
    )

    where = log_dir(s3_url, "api")
    assert where == f"{s3_url}/inference/api"
    writer = InferenceWriter(where, "replica-a", flush_every=2, flush_seconds=60)
    for index in range(3):
        writer.write(InferenceRecord(f"id{index}", 1000.0 + index, 1, {"x": index}, index * 2.0, 4.0, "req", 1))
    assert [r.id for r in read(where)] == ["id0", "id1"]  # the first flush; the third record is pending
    writer.close()
    assert [r.id for r in read(where)] == ["id0", "id1", "id2"]
    assert [r.id for r in read(where, since=1000.5)] == ["id1", "id2"]

    errors = error_dir(s3_url, "api")
    write_error(errors, "replica-a", ErrorRecord("req-9", 1001.0, 1, "ValueError: boom", "Traceback ..."))
    [failure] = read_errors(errors, "req-9")
    assert failure.error == "ValueError: boom"
    assert [r.id for r in read(where)] == ["id0", "id1", "id2"]  # the errors are not inference records
    assert read(log_dir(s3_url, "other")) == []
