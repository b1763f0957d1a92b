"""A replica's loaded version keeps a scratch folder (the artifact's copy when its store is remote); it goes
with the version: when a newer one replaces it, when the replica stops, at once when the version fails to load.

Before, every load left an ``mlops-model-*`` folder in the temp folder for good (1,300 of them here after a
day's test runs), one more at each switch, rollback and staging start.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import pytest

from runtime.artifacts.store import ArtifactStore
from runtime.compute.replica import ServeSpec, load, server_class
from runtime.endpoint.contract import ApiConfig
from runtime.errors import TaskError

SCORER = '''
from pathlib import Path


def train(ctx):
    raise NotImplementedError


def load_predictor(model_path, params):
    weights = Path(model_path).read_bytes()  # read once: the predictor keeps no file open
    return lambda rows: [len(weights) for _ in rows]
'''


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temp folder, so what the loads leave behind is this test's alone to count."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _spec(tmp_path: Path, version: int = 1, model: bytes = b"weights") -> ServeSpec:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    module = f"scratch_scorer_{abs(hash(str(tmp_path)))}"
    (repo / f"{module}.py").write_text(SCORER)
    store = ArtifactStore(str(tmp_path / "artifacts"))
    uri = store.put_bytes(model)
    return ServeSpec(deployment="churn", version=version, target=f"{module}:train", code_hash=None,
                     repo_root=str(repo), artifact_root=str(tmp_path / "artifacts"), model_uri=uri, params={},
                     api=ApiConfig(deployment="churn", route="/churn", version=version))


def test_a_replaced_version_takes_its_folder_with_it(tmp_path: Path, temp_root: Path) -> None:
    first = load(_spec(tmp_path, 1))
    assert first.predictor([{}]) == [len(b"weights")]
    folder = Path(first.scratch.name)
    assert folder.parent == temp_root and folder.is_dir()
    second = load(_spec(tmp_path, 2, b"new weights"))
    del first  # what a replica does at a switch: no request answers with the version before any more
    gc.collect()
    assert not folder.exists()
    assert [p.name for p in temp_root.iterdir()] == [Path(second.scratch.name).name]


def test_a_version_that_fails_to_load_leaves_no_folder(tmp_path: Path, temp_root: Path) -> None:
    spec = _spec(tmp_path)
    stored = ArtifactStore(spec.artifact_root).verified_path(spec.model_uri)
    assert stored is not None
    stored.chmod(0o644)
    stored.write_bytes(b"tampered")  # the artifact no longer matches its hash: refused before it is loaded
    with pytest.raises(TaskError, match="sha256|hash|tamper|modified"):
        load(spec)
    assert list(temp_root.iterdir()) == []


def test_a_stopping_replica_removes_its_versions_folder(tmp_path: Path, temp_root: Path) -> None:
    spec = _spec(tmp_path)
    replica = server_class().func_or_class(spec.home())
    replica.reconfigure(spec.user_config())
    folder = Path(replica.loaded.scratch.name)
    assert folder.is_dir()
    replica.__del__()  # what Serve calls when it stops a replica gracefully
    assert not folder.exists()
    assert [p.name for p in temp_root.iterdir()] == []


def test_a_replica_killed_without_its_graceful_stop_leaves_its_folder_to_the_next_replica(
        tmp_path: Path, temp_root: Path) -> None:
    import os
    import subprocess

    from runtime import processes
    from runtime.compute.replica import SCRATCH_PREFIX

    gone = subprocess.Popen(["true"])
    gone.wait()  # a replica the cluster's stop killed: its folder, with its copy of the model, stayed
    orphan = temp_root / f"{SCRATCH_PREFIX}{gone.pid}-k1ll3d"
    orphan.mkdir()
    (orphan / "model.pt").write_bytes(b"w" * 4096)
    serving = temp_root / f"{SCRATCH_PREFIX}{os.getppid()}-live"  # another live replica's version: kept
    serving.mkdir()
    processes._SWEPT.discard((temp_root, SCRATCH_PREFIX))  # as in a new replica process
    loaded = load(_spec(tmp_path))
    assert Path(loaded.scratch.name).name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    assert not orphan.exists() and serving.is_dir()
