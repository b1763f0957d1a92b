"""A real PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``postgres`` on a free
loopback port, a fresh database per test; stopped at the end of the session.

Run as the ``postgres`` OS user when the tests run as root (PostgreSQL refuses root). The binaries are
found on ``PATH`` or in Debian's ``/usr/lib/postgresql/*/bin`` (``.ci/run`` installs the package).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ports import free_port

USER = "mlops"


def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or ``None`` when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists():
            return Path(folder)
    return None



class PostgresServer:
    """One temporary PostgreSQL cluster; :meth:`database` makes a fresh database and returns its URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PostgresServer:
        subprocess.run([*self._as, str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                        "--locale=C", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - the server's for its life
        if self._as:
            shutil.chown(self.root / "server.log", "postgres", "postgres")
        self.process = subprocess.Popen(
            [*self._as, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {(self.root / 'server.log').read_text()}") from None
                time.sleep(0.05)
        self.admin_url = self.url("postgres")
        for _ in range(100):  # accepting TCP connections comes a moment before accepting sessions
            try:
                self._admin("SELECT 1")
                break
            except Exception:  # noqa: BLE001 - starting up
                time.sleep(0.1)
        return self

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.encode())

    def database(self, prefix: str = "state") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # smart shutdown: sessions end, then the server
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def raw(location: Path | str) -> Any:
    """A plain SQL connection to a state (``?`` placeholders, autocommit), as someone editing it by hand uses."""
    if isinstance(location, Path):
        import sqlite3

        return sqlite3.connect(location, isolation_level=None)
    import psycopg

    from runtime.state.pg import Connection

    return Connection(psycopg.connect(location, autocommit=True), location)
