"""Artifacts on any S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph, R2, ...) through s3fs.

``s3://bucket/prefix``: objects live at ``<prefix>/objects/<hex[:2]>/<hex[2:]>``. The endpoint is the standard
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (else AWS itself), the region ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, the credentials whatever boto finds (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
a profile, an instance role). The store's guarantees hold here as on a local disk:

* **Content addressing**: an object's key is its sha256.
* **Nothing half-written is ever visible**: an object reaches its final key only in one request carrying its
  whole body (a PUT up to :data:`SINGLE_PUT_MAX` bytes), or as a multipart upload, which S3 shows only once it
  is completed. A PUT carries the body's sha256 (``x-amz-checksum-sha256``): the store refuses a body that does
  not hash to it, so an upload cut or garbled on the way never lands, and a later ``HEAD`` tells that the object
  is intact without reading it.
* **A concurrent writer never clobbers**: a new object is written with ``If-None-Match: *``; a ``412`` says
  another writer stored it first, which content addressing makes the same bytes. Only an object known to be
  damaged (the wrong size, or content that does not hash to its name) is replaced, unconditionally. A store that
  answers ``501`` to the condition is written to without it from then on: content addressing alone keeps
  concurrent writers of a key writing the same bytes.
* **Verification on read**: :class:`~runtime.artifacts.store.ArtifactStore` hashes everything it reads, a
  single ``GET`` streamed (:class:`ObjectReader`).
* A store that cannot be used (no s3fs, no credentials, an endpoint that does not answer, no such bucket, access
  denied) is an :class:`~runtime.artifacts.backends.ArtifactStoreUnavailable`: one line naming the URL, checked
  once (``HEAD`` on the bucket) before the first request.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

from compiler.content_hash import hash_file
from runtime.artifacts.backends import ArtifactError, ArtifactStoreUnavailable, Backend, StoredObject, chunks, is_digest

MULTIPART_CHUNK = 50 << 20
"""Part size of a multipart upload (s3fs's default)."""
SINGLE_PUT_MAX = 2 * MULTIPART_CHUNK - 1
"""Bytes up to which an object is one PUT (read into memory); larger ones are multipart uploads."""
MAX_PARTS = 10_000
DELETE_BATCH = 1000
"""Keys per ``DeleteObjects`` request (S3's maximum)."""
ABSENT, INTACT, DAMAGED = "absent", "intact", "damaged"
CONFLICT_TRIES = 5


def _b64(digest: str) -> str:
    """A hex sha256 as S3's ``ChecksumSHA256`` (base64 of the raw digest)."""
    return base64.b64encode(bytes.fromhex(digest)).decode()


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind an exception s3fs translated (``("", 0)``: none)."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            code = str((response.get("Error") or {}).get("Code", ""))
            status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            return code, status or (int(code) if code.isdigit() else 0)
    return "", 0


class _Conflict(Exception):
    """A conditional write found the key taken (412), or another conditional write of it in flight (409)."""


class _Unsupported(Exception):
    """The store does not implement conditional writes (501 to ``If-None-Match``)."""


class S3Backend(Backend):
    """Objects in an S3 bucket under a prefix (see the module's docstring for what each operation guarantees)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        rest = url.partition("://")[2]
        self.url = url.rstrip("/") if rest.strip("/") else url
        self.bucket, _, prefix = rest.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        if not self.bucket:
            raise self._unavailable("it names no bucket (expected s3://bucket/prefix)")
        options = dict(options)
        self.endpoint: str | None = (options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3")
                                     or os.environ.get("AWS_ENDPOINT_URL") or None)
        try:
            import s3fs
        except ImportError:
            raise self._unavailable("the s3fs package is not installed (pip install s3fs)") from None
        client_kwargs = dict(options.pop("client_kwargs", {}))
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region and "region_name" not in client_kwargs:
            client_kwargs["region_name"] = region
        config = {"retries": {"max_attempts": 4, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 120,
                  **options.pop("config_kwargs", {})}
        retries = options.pop("retries", None)  # s3fs's own tries of a request, beside botocore's
        self.fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, client_kwargs=client_kwargs, config_kwargs=config,
                                    skip_instance_cache=True, **options)
        if retries is not None:
            self.fs.retries = int(retries)
        self._checked = False
        self.conditional_writes = True
        """Whether the store takes ``If-None-Match: *`` (cleared at its first 501: content addressing alone then
        keeps concurrent writers of a key writing the same bytes)."""

    # --- names and errors ------------------------------------------------------------------------

    def key(self, digest: str) -> str:
        return f"{self.prefix}/objects/{digest[:2]}/{digest[2:]}" if self.prefix else \
            f"objects/{digest[:2]}/{digest[2:]}"

    def location(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self.key(digest)}"

    def _where(self) -> str:
        return self.endpoint or "AWS S3 (set AWS_ENDPOINT_URL for another S3-compatible store)"

    def _unavailable(self, problem: str) -> ArtifactStoreUnavailable:
        return ArtifactStoreUnavailable.of(self.url, problem)

    def _problem(self, exc: BaseException, what: str) -> str:
        """``exc``, raised by ``what``, in words."""
        names = {type(link).__name__ for link in _chain(exc)}
        code, status = _code(exc)
        if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
            return "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        if names & {"NoRegionError"}:
            return "no region (set AWS_REGION)"
        if names & {"ServerDisconnectedError", "ConnectionClosedError", "ConnectionResetError", "ClientOSError",
                    "ClientPayloadError", "ReadTimeoutError", "BrokenPipeError"}:
            return f"the connection to {self._where()} was lost during {what}"
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                    "ConnectionRefusedError"}:
            return f"cannot reach the S3 endpoint {self._where()}"
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            return (f"access denied by {self._where()} ({code or status}) on {what}: check AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY and the bucket's policy")
        if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
            return f"AWS_ENDPOINT_URL {self.endpoint!r} is not a usable URL ({exc})"
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{what} failed at {self._where()}: {code + ': ' if code and code not in detail else ''}{detail}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        """One S3 request. ``FileNotFoundError`` (404) passes; a taken key is :class:`_Conflict`; anything else
        that goes wrong is a one-line :class:`ArtifactStoreUnavailable`."""
        self._ready()
        return self._request(method, **kwargs)

    def _request(self, method: str, **kwargs: Any) -> Any:
        try:
            return self.fs.call_s3(method, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the store becomes one line naming it
            self._raise(exc, f"{method} {kwargs.get('Key', '')}".strip(), "IfNoneMatch" in kwargs)

    def _raise(self, exc: BaseException, what: str, conditional: bool = False) -> None:
        code, status = _code(exc)
        if conditional and (status == 501 or code == "NotImplemented"):
            raise _Unsupported(code or str(status)) from exc
        if isinstance(exc, FileExistsError) or status in (409, 412) or code in ("PreconditionFailed",
                                                                                 "ConditionalRequestConflict"):
            raise _Conflict(code or str(status)) from exc
        raise self._unavailable(self._problem(exc, what)) from None

    def _ready(self) -> None:
        """Check once that the bucket is there and these credentials may use it (one ``HEAD``)."""
        if self._checked:
            return
        try:
            self._request("head_bucket", Bucket=self.bucket)
        except FileNotFoundError:
            raise self._unavailable(f"bucket {self.bucket!r} does not exist at {self._where()}") from None
        except _Conflict as exc:
            raise self._unavailable(f"the bucket cannot be read at {self._where()} ({exc})") from None
        self._checked = True

    # --- reading ---------------------------------------------------------------------------------

    def _head(self, digest: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._call("head_object", Bucket=self.bucket, Key=self.key(digest),
                                              ChecksumMode="ENABLED")
        except FileNotFoundError:
            return None
        return head

    def exists(self, digest: str, size: int | None = None) -> bool:
        head = self._head(digest)
        return head is not None and (size is None or int(head.get("ContentLength", -1)) == size)

    def open_read(self, digest: str) -> IO[bytes]:
        """The object's bytes, streamed from one ``GET`` (a consistent copy even if it were replaced meanwhile)."""
        try:
            response = self._call("get_object", Bucket=self.bucket, Key=self.key(digest))
        except FileNotFoundError:
            raise ArtifactError.one(f"artifact sha256:{digest} is not in {self.url}") from None
        return io.BufferedReader(ObjectReader(self, digest, response["Body"]), buffer_size=1 << 20)

    def state(self, digest: str, size: int) -> str:
        """:data:`ABSENT`, :data:`INTACT` or :data:`DAMAGED`: the object under ``digest`` for content of ``size``.

        The checksum the store computed when it took the object tells without reading it; an object stored
        without one (by another tool, or a multipart upload) is read and hashed if it is one PUT's size, and
        otherwise trusted by its size (every read checks it anyway)."""
        head = self._head(digest)
        if head is None:
            return ABSENT
        if int(head.get("ContentLength", -1)) != size:
            return DAMAGED
        checksum = head.get("ChecksumSHA256")
        if checksum:
            return INTACT if checksum == _b64(digest) else DAMAGED
        if size > SINGLE_PUT_MAX:
            return INTACT
        hasher = hashlib.sha256()
        try:
            with self.open_read(digest) as handle:
                for chunk in chunks(handle):
                    hasher.update(chunk)
        except ArtifactError:  # deleted meanwhile
            return ABSENT
        return INTACT if hasher.hexdigest() == digest else DAMAGED

    def intact(self, digest: str, size: int) -> bool:
        return self.state(digest, size) == INTACT

    # --- listing and deleting (the garbage collector's) ------------------------------------------

    def _listed(self, folder: str) -> Iterator[dict[str, Any]]:
        """Every object under ``<prefix>/<folder>/`` as ``ListObjectsV2`` gives it, page by page."""
        prefix = f"{self.prefix}/{folder}/" if self.prefix else f"{folder}/"
        token: str | None = None
        while True:
            page = self._call("list_objects_v2", Bucket=self.bucket, Prefix=prefix,
                              **({"ContinuationToken": token} if token else {}))
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def list_objects(self) -> Iterator[StoredObject]:
        """Each object's size and ``LastModified`` (the server's clock, as :meth:`clock` reads it)."""
        for item in self._listed("objects"):
            digest = "".join(str(item["Key"]).rsplit("/", 2)[-2:])
            if is_digest(digest):
                yield StoredObject(digest, int(item.get("Size", 0)), item["LastModified"].timestamp())

    def delete(self, digests: list[str]) -> None:
        """``DeleteObjects`` of up to :data:`DELETE_BATCH` keys a request; S3 removes each key atomically."""
        for start in range(0, len(digests), DELETE_BATCH):
            batch = [{"Key": self.key(digest)} for digest in digests[start:start + DELETE_BATCH]]
            answer = self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise self._unavailable(f"deleting s3://{self.bucket}/{first.get('Key')} failed at {self._where()}: "
                                        f"{first.get('Code')}: {first.get('Message')}")

    def clock(self) -> float:
        """The server's time (the ``Date`` of a ``HEAD`` on the bucket, to the second): the clock that stamps
        ``LastModified``, whatever this machine's clock says."""
        self._ready()
        answer = self._request("head_bucket", Bucket=self.bucket)
        date = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        return parsedate_to_datetime(date).timestamp() if date else time.time()

    def usage(self, folder: str) -> int:
        return sum(int(item.get("Size", 0)) for item in self._listed(folder))

    # --- writing ---------------------------------------------------------------------------------

    def write_file(self, path: Path) -> str:
        digest = hash_file(path)
        size = os.stat(path).st_size
        if size > SINGLE_PUT_MAX:
            self._store(digest, size, lambda conditional: self._put_multipart(path, digest, size, conditional))
        else:
            self._store(digest, size, lambda conditional: self._put(digest, path.read_bytes(), conditional))
        return digest

    def write_bytes(self, digest: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactError.one(f"refusing to store bytes as sha256:{digest}: they hash to something else")
        self._store(digest, len(data), lambda conditional: self._put(digest, data, conditional))

    def _store(self, digest: str, size: int, put: Any) -> None:
        """Write the object unless it is there intact: conditionally when absent, over it when damaged."""
        state = self.state(digest, size)
        for attempt in range(CONFLICT_TRIES):
            if state == INTACT:
                return
            try:
                put(state == ABSENT)
                return
            except _Conflict:  # another writer got there first (or is writing it now: 409)
                state = self.state(digest, size)
                time.sleep(0.05 * attempt)
        raise self._unavailable(f"{self.location(digest)} could not be written: other writers kept it busy")

    def _put(self, digest: str, data: bytes, conditional: bool) -> None:
        """One PUT of the whole body with its sha256: the store keeps it whole or not at all."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(digest), "Body": data,
                                  "ChecksumSHA256": _b64(digest)}
        if conditional and self.conditional_writes:
            kwargs["IfNoneMatch"] = "*"
        try:
            self._call("put_object", **kwargs)
        except _Unsupported:
            self.conditional_writes = False
            self._call("put_object", **{k: v for k, v in kwargs.items() if k != "IfNoneMatch"})

    def _put_multipart(self, path: Path, digest: str, size: int, conditional: bool) -> None:
        """A multipart upload (s3fs): invisible until completed, completed with ``If-None-Match: *`` when new."""
        self._ready()
        chunksize = max(MULTIPART_CHUNK, -(-size // MAX_PARTS))
        create = conditional and self.conditional_writes
        try:
            self.fs.put_file(str(path), f"{self.bucket}/{self.key(digest)}", chunksize=chunksize,
                             mode="create" if create else "overwrite")
        except Exception as exc:  # noqa: BLE001 - one line naming the store
            try:
                self._raise(exc, f"multipart upload of {self.key(digest)}", create)
            except _Unsupported:
                self.conditional_writes = False
                self._put_multipart(path, digest, size, conditional)
                return
        head = self._head(digest)
        if head is None or int(head.get("ContentLength", -1)) != size:
            raise self._unavailable(f"{self.location(digest)} is not whole after its upload")


class ObjectReader(io.RawIOBase):
    """The body of one ``GET`` as a blocking binary stream (read on s3fs's event loop)."""

    def __init__(self, backend: S3Backend, digest: str, body: Any) -> None:
        super().__init__()
        self.backend = backend
        self.digest = digest
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from fsspec.asyn import sync

        try:
            data: bytes = sync(self.backend.fs.loop, self.body.read, len(buffer))
        except Exception as exc:  # noqa: BLE001 - a connection lost mid-read: one line naming the object
            raise self.backend._unavailable(f"reading {self.backend.location(self.digest)}: "
                                            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()
