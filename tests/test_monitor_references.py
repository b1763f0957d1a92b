"""Monitor reference tables and monitors whose checks cannot run, without Ray.

The projects here are real (a git work tree, a SQLite state, a content-addressed artifact store): their
source datasets are snapshotted by ``apply --target`` (a local step, no Ray), and the deployment's
inference log is written the way a serving replica writes it (:class:`InferenceWriter`); nothing is
deployed, so no check here needs a live version.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli, write_project

from compiler import load_project
from compiler.resolve import Project
from runtime.apply.operations import apply_project, opened
from runtime.monitor.inference_log import InferenceRecord, InferenceWriter, log_dir
from runtime.monitor.tables import columns_of, read_rows
from runtime.workspace import Workspace

mlops = run_cli

# --- reference tables from NumPy files ----------------------------------------------------------------


def test_reference_tables_read_npz_and_npy_files(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    output = tmp_path / "transform-output"  # what the old starter's build_features wrote
    output.mkdir()
    np.savez(output / "features.npz", x=x, y=y)
    rows = read_rows(output)
    assert rows[1] == {"x_0": 3.0, "x_1": 4.0, "x_2": 5.0, "y": 1.0}
    columns = columns_of(rows)
    assert list(columns) == ["x_0", "x_1", "x_2", "y"] and columns["x_2"].dtype == float
    assert columns["x_2"].tolist() == [2.0, 5.0, 8.0, 11.0]

    snapshot = tmp_path / "0123abcd"  # a content-addressed object has no suffix: the dataset's format says
    with snapshot.open("wb") as handle:
        np.save(handle, x)
    assert read_rows(snapshot, ".npy")[0] == {"column_0": 0.0, "column_1": 1.0, "column_2": 2.0}
    np.save(tmp_path / "scores.npy", y)
    assert [r["value"] for r in read_rows(tmp_path / "scores.npy")] == [0.0, 1.0, 1.0, 0.0]
    table = np.array([(1, 2.5), (2, 3.5)], dtype=[("id", "i8"), ("amount", "f8")])
    np.save(tmp_path / "table.npy", table)
    assert read_rows(tmp_path / "table.npy") == [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 3.5}]

    np.savez(tmp_path / "ragged.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(ValueError, match="different lengths"):
        read_rows(tmp_path / "ragged.npz")
    np.savez(tmp_path / "cube.npz", c=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="1-d or 2-d"):
        read_rows(tmp_path / "cube.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):  # never unpickled
        read_rows(tmp_path / "objects.npy")


# --- monitors whose checks cannot run -----------------------------------------------------------------

DATA = "x,label\n" + "".join(f"{i / 10},{i % 2}\n" for i in range(40))


def spec() -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1", "project": "erring",
        "datasets": {"raw": {"path": "data/raw.csv"}, "blob": {"path": "data/blob.bin"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}}},
        "deployments": {"api": {"model": "m", "resources": {"cpus": 0.25}}},
        "monitors": {
            "unreadable": {"deployment": "api", "reference": "blob",
                           "checks": [{"type": "data_drift", "method": "psi"}]},
            "columns": {"deployment": "api", "reference": "raw",
                        "checks": [{"type": "data_drift", "method": "psi", "columns": ["tenure_months"]},
                                   {"type": "latency", "p95_ms": 1000}]},
        },
    }


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The project with its two source datasets snapshotted and 40 logged requests like the reference."""
    spec_path = write_project(tmp_path / "erring", spec(),
                              files={"data/raw.csv": DATA, "data/blob.bin": b"\x00\x01 not a table \xff"})
    loaded = load_project(spec_path)
    outcome = apply_project(loaded, targets=["datasets.raw", "datasets.blob"])
    assert outcome.result.ok, outcome.result.outcomes
    writer = InferenceWriter(log_dir(Workspace.of(loaded).artifact_root, "api"), "test-replica")
    now = time.time()
    for i in range(40):
        writer.write(InferenceRecord(f"req-{i}", now + i * 1e-3, 1, {"x": i / 10}, 0.5, 2.0))
    writer.close()
    return loaded


def status_of(capsys: pytest.CaptureFixture[str], project: Project) -> dict[str, dict[str, Any]]:
    code, out, _ = mlops(capsys, "-f", str(project.spec_path), "status", "--json")
    assert code == 0
    return {r["address"]: r for r in json.loads(out)["resources"]}


def test_an_unreadable_reference_makes_monitor_run_exit_1_with_the_error_and_status_degraded(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = str(project.spec_path)
    code, out, err = mlops(capsys, "-f", spec_file, "monitor", "run", "unreadable")
    assert code == 1
    assert "monitors.unreadable on deployments.api (no live version): ERROR" in out
    assert ": ok" not in out
    assert "error: check 0 (data_drift, psi): ValueError: cannot read bin data as a table" in out
    assert err.strip() == ("error: monitors.unreadable: check 0 (data_drift, psi) could not be evaluated: "
                           "ValueError: cannot read bin data as a table (monitors read csv, jsonl, parquet, npz "
                           "and npy)")
    with opened(project) as (_, store):  # stored before the command failed
        [stored] = store.monitor_results("unreadable")
    assert stored.checks[0]["status"] == "error" and not stored.breached

    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "run", "unreadable", "--json")
    payload = json.loads(out)
    assert code == 1 and payload["ok"] is False and payload["breached"] is False
    assert [c["status"] for c in payload["results"][0]["checks"]] == ["error"]
    assert payload["errors"] == [err.strip().removeprefix("error: ")]

    row = status_of(capsys, project)["monitors.unreadable"]
    assert row["health"] == "Degraded"
    assert row["detail"] == ("1 check(s) could not be evaluated: data_drift (psi): ValueError: cannot read bin "
                             "data as a table (monitors read csv, jsonl, parquet, npz and npy)")
    code, out, _ = mlops(capsys, "-f", spec_file, "status")
    assert re.search(r"monitors\.unreadable\s+\S+\s+Degraded\s+1 check\(s\) could not be evaluated", out), out
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "history", "unreadable")
    assert code == 0 and re.search(r"\berror\b", out) and not re.search(r"\bok\b", out)


def test_a_reference_without_the_checked_columns_is_an_error_until_the_columns_exist(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = str(project.spec_path)
    code, out, err = mlops(capsys, "-f", spec_file, "monitor", "run", "columns")
    assert code == 1
    assert "monitors.columns on deployments.api (no live version): ERROR" in out
    assert "column(s) 'tenure_months' not in the reference sample" in out
    assert "could not be evaluated: ValueError: column(s) 'tenure_months' not in the reference sample" in err
    assert mlops(capsys, "-f", spec_file, "monitor", "run", "columns", "--detailed-exitcode")[0] == 1
    row = status_of(capsys, project)["monitors.columns"]
    assert row["health"] == "Degraded"  # even though the latency check is ok
    assert "column(s) 'tenure_months' not in the reference sample" in row["detail"]

    body = yaml.safe_load(project.spec_path.read_text())
    body["monitors"]["columns"]["checks"][0]["columns"] = ["x"]
    project.spec_path.write_text(yaml.safe_dump(body, sort_keys=False))
    code, out, err = mlops(capsys, "-f", spec_file, "monitor", "run", "columns")
    assert code == 0 and err == "", err
    assert "monitors.columns on deployments.api (no live version): ok" in out
    row = status_of(capsys, project)["monitors.columns"]
    assert (row["health"], row["detail"]) == ("Healthy", "2 of 2 check(s) ok")


def test_a_monitor_with_every_check_skipped_is_progressing_and_exits_0(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    body = yaml.safe_load(project.spec_path.read_text())
    body["monitors"]["columns"]["checks"] = [{"type": "accuracy", "metric": "auc", "min": 0.5}]
    project.spec_path.write_text(yaml.safe_dump(body, sort_keys=False))
    code, out, _ = mlops(capsys, "-f", str(project.spec_path), "monitor", "run", "columns")
    assert code == 0 and "not enough data" in out
    row = status_of(capsys, project)["monitors.columns"]
    assert (row["health"], row["detail"]) == ("Progressing", "waiting for data: every check skipped")
