"""What the reconciler's Deployment (``mlops compile`` for KubeRay) relies on in the runtime.

* ``--metrics-host 0.0.0.0``: its metrics listen on the pod's address, where the ServiceMonitor scrapes them
  (by default they stay on 127.0.0.1);
* ``MLOPS_GIT_TOKEN`` (and ``MLOPS_GIT_USERNAME``) from its Secret: an ``https://`` fetch answers the server's
  challenge with them, so no token is written in the spec, the command line or the clone's config.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ports import free_port

from runtime.reconcile import gitsync
from runtime.reconcile.gitsync import FetchError, git_credentials

ROOT = Path(__file__).resolve().parents[1]



def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (``/proc/net/tcp``, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc/net/tcp")
@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_metrics_listen_on_the_address_metrics_host_names(tmp_path: Path, host: str | None, expected: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("a\n1\n")
    (tmp_path / "mlops.yaml").write_text("apiVersion: mlops/v1\nproject: tiny\n"
                                         "datasets:\n  raw: {path: data/raw.csv}\n")
    port = free_port()
    argv = [sys.executable, "-m", "runtime.cli.main", "-f", str(tmp_path / "mlops.yaml"), "reconcile", "--watch",
            "--interval", "1h", "--metrics-port", str(port), *(["--metrics-host", host] if host else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening_addresses(port) == {expected}
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class Challenging(BaseHTTPRequestHandler):
    """A git server that wants Basic credentials: 401 without them, records them, then 404 (no such repository)."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        self.seen.append(authorization)
        if authorization is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def git_server() -> Iterator[tuple[str, type[Challenging]]]:
    handler = type("Handler", (Challenging,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/acme/churn.git", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_fetch_answers_the_servers_challenge_with_the_token_from_the_environment(
        tmp_path: Path, git_server: tuple[str, type[Challenging]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = git_server
    # libgit2 sends credentials over https only in real life; the callback is the same for http, so a plain
    # loopback server shows what it sends (git_credentials answers https:// URLs; here it is asked for one)
    monkeypatch.setattr(gitsync, "git_credentials", lambda _url, env=os.environ: git_credentials(
        _url.replace("http://", "https://"), env))
    monkeypatch.setenv("MLOPS_GIT_TOKEN", "ghs_token123")
    monkeypatch.setenv("MLOPS_GIT_USERNAME", "")
    with pytest.raises(FetchError):
        _fetch_in_process(tmp_path / "clone", url)
    expected = "Basic " + base64.b64encode(b"x-access-token:ghs_token123").decode()
    assert handler.seen[0] is None and expected in handler.seen[1:]
    assert "ghs_token123" not in (tmp_path / "clone" / ".git" / "config").read_text()


def _fetch_in_process(checkout: Path, url: str) -> None:
    """The fetch's child, run in this process (where the test's patch applies)."""
    answer = gitsync._child(checkout, url, 1 << 20)
    if not answer["ok"]:
        raise FetchError(answer["error"])


def test_credentials_are_the_agent_for_ssh_the_token_for_https_and_none_without_one() -> None:
    import pygit2

    assert isinstance(git_credentials("git@github.com:acme/churn.git", {}), pygit2.KeypairFromAgent)
    assert isinstance(git_credentials("ssh://git@github.com/acme/churn.git", {}), pygit2.KeypairFromAgent)
    https = "https://gitlab.com/acme/churn.git"
    assert git_credentials(https, {}) is None  # a public repository
    default = git_credentials(https, {"MLOPS_GIT_TOKEN": "t0ken"})
    assert isinstance(default, pygit2.UserPass) and default.credential_tuple == ("x-access-token", "t0ken")
    named = git_credentials(https, {"MLOPS_GIT_TOKEN": "glpat", "MLOPS_GIT_USERNAME": "deploy-bot"})
    assert named.credential_tuple == ("deploy-bot", "glpat")
    assert git_credentials("http://example.com/acme/churn.git", {"MLOPS_GIT_TOKEN": "t0ken"}) is None  # never in clear
