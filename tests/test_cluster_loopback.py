"""The embedded cluster is this machine's alone: no process of it listens beyond the loopback address.

``mlops up`` starts the long-lived local Ray (``runtime/compute/cluster.py``) and ``ray_backend.connect()`` the
in-process one an apply starts; every TCP socket their processes listen on (read from ``/proc/net/tcp`` and
``/proc/net/tcp6`` through each process's descriptors) must be on 127.0.0.1 (or ``::1``), never on the
wildcard address or the machine's external one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))
SPEC = """apiVersion: mlops/v1
project: loopback
owners: [team:x]
datasets:
  rows: {path: data/rows.csv, description: rows}
  copied: {from: [rows], transform: "pipeline:copy", description: "the rows, copied on the cluster"}
models:
  m: {train: "pipeline:train", data: {train: rows}}
deployments:
  api: {model: m, replicas: 1, route: /api}
"""
PIPELINE = """
import torch

from runtime.context import TrainResult


def train(ctx):
    return TrainResult(model={"w": torch.tensor(2.0)}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["a"]) for row in rows]


def copy(ctx):
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())
"""
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _address(hex_address: str, six: bool) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if not six:
        return ".".join(str(b) for b in raw[::-1]), int(port, 16)
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian 32-bit words
    packed = b"".join(words)
    import ipaddress

    ip = ipaddress.IPv6Address(packed)
    mapped = ip.ipv4_mapped
    return (f"::ffff:{mapped}" if mapped else str(ip)), int(port, 16)


def listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP socket listening on this machine."""
    found: dict[int, tuple[str, int]] = {}
    for name, six in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[int(fields[9])] = _address(fields[1], six)
    return found


def sockets_of(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of each listening socket the processes ``pids`` hold."""
    table = listening()
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    out.append((pid, *table[inode]))
    return out


def session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # session id
                members.append(int(entry))
    return members


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "mlops.yaml").write_text(SPEC)
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("a,b\n1,2\n")
    (tmp_path / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    yield tmp_path
    subprocess.run([MLOPS, "down"], cwd=tmp_path, capture_output=True, timeout=120)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_the_local_cluster_of_mlops_up_listens_on_loopback_only(project: Path) -> None:
    done = subprocess.run([MLOPS, "up"], cwd=project, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    info = json.loads((project / ".mlops" / "cluster.json").read_text())
    members = session_members(info["pgid"])
    assert len(members) >= 4, members  # the head's processes: ray start, GCS, raylet, agents
    sockets = sockets_of(members)
    assert len(sockets) >= 3, sockets
    outside = [s for s in sockets if s[1] not in LOOPBACK]
    assert not outside, f"listening beyond loopback: {outside}"
    # an apply joins it at 127.0.0.1 (a driver that turned it into the machine's address would hang); its tasks
    # run on workers of the cluster, and Serve's controller, proxy and the replica (with its inter-deployment
    # gRPC server) start there: all listen on loopback too
    done = subprocess.run([MLOPS, "apply"], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "serving deployments.api/deploy: version 1" in done.stdout, done.stdout
    after = sockets_of(session_members(info["pgid"]))
    assert len(after) > len(sockets), after  # the replica's and the proxy's servers are among them
    outside = [s for s in after if s[1] not in LOOPBACK]
    assert not outside, f"listening beyond loopback after an apply: {outside}"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_the_embedded_ray_of_an_apply_listens_on_loopback_only(tmp_path: Path) -> None:
    script = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
from runtime.compute import ray_backend
import ray
ray_backend.connect(num_cpus=1)
assert ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker is up and listening too
from test_cluster_loopback import descendants, sockets_of
print(json.dumps(sockets_of(descendants(os.getpid()))))
ray_backend.shutdown()
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    sockets = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(sockets) >= 3, sockets
    outside = [s for s in sockets if s[1] not in LOOPBACK]
    assert not outside, f"listening beyond loopback: {outside}"
