"""Every number a cluster, a store or a scheduler would choke on has an upper bound: ``replicas: 1``
followed by 400 zeros is one positioned error naming the bound, at validate time; the bounds are in the
JSON Schema too. User ``params`` (epochs, batch sizes, ...) are the user's and stay unbounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compiler.errors import SpecError
from compiler.load import load_text
from compiler.parse import parse
from compiler.spec import Spec

ROOT = Path(__file__).resolve().parents[1]
HUGE = "1" + "0" * 400

SPEC = """apiVersion: mlops/v1
project: demo
cluster:
  provider: kuberay
  head: {cpus: 2, memory: 8Gi}
  workers:
    gpu: {gpus: 1, cpus: 8, memory: 64Gi, min: 0, max: 4}
datasets:
  raw: {path: raw.csv, retention_days: 365, resources: {cpus: 1}}
models:
  m:
    train: pipeline:train
    data: {train: raw}
    params: {epochs: 20}
    resources: {cpus: 2, gpus: 0, memory: 4Gi, workers: 1}
    seed: 7
    retries: 2
    timeout: 30m
gates:
  g:
    model: m
    checks: [{metric: auc, op: ">=", value: 0.8}, {metric: auc, no_regression: 0.01}]
    approvals: {required: 1}
deployments:
  d: {model: m, replicas: 2, resources: {cpus: 1, gpus: 0}, version: 3}
monitors:
  w:
    deployment: d
    schedule: 1h
    checks:
      - {type: data_drift, threshold: 0.2}
      - {type: prediction_drift, threshold: 0.1}
      - {type: accuracy, metric: auc, min: 0.7, window: 1000}
      - {type: latency, p95_ms: 200}
"""

# (the text as written in SPEC, what replaces it, the field as the message names it, the bound it names)
BOUNDED = [
    ("head: {cpus: 2", "head: {cpus: HUGE", "head.cpus", "1024"),
    ("head: {cpus: 2, memory: 8Gi}", "head: {cpus: 2, memory: HUGEGi}", "head.memory", "64Ti"),
    ("gpus: 1, cpus: 8", "gpus: HUGE, cpus: 8", "workers.gpu.gpus", "16"),
    ("gpus: 1, cpus: 8", "gpus: 1, cpus: HUGE", "workers.gpu.cpus", "1024"),
    ("memory: 64Gi", "memory: HUGEMi", "workers.gpu.memory", "64Ti"),
    ("min: 0, max: 4", "min: HUGE, max: 4", "workers.gpu.min", "1000"),
    ("min: 0, max: 4", "min: 0, max: HUGE", "workers.gpu.max", "1000"),
    ("retention_days: 365", "retention_days: HUGE", "retention_days", "36500"),
    ("resources: {cpus: 1}}", "resources: {cpus: HUGE}}", "resources.cpus", "1024"),
    ("resources: {cpus: 2, gpus: 0", "resources: {cpus: 2, gpus: HUGE", "resources.gpus", "16"),
    ("memory: 4Gi", "memory: HUGEKi", "resources.memory", "64Ti"),
    ("workers: 1}", "workers: HUGE}", "resources.workers", "1024"),
    ("seed: 7", "seed: HUGE", "seed", "4294967295"),
    ("retries: 2", "retries: HUGE", "retries", "10"),
    ("timeout: 30m", "timeout: HUGEm", "timeout", "365d"),
    ('value: 0.8}', "value: HUGE}", "checks.0.value", "1000000000000"),
    ("no_regression: 0.01", "no_regression: HUGE", "checks.1.no_regression", "1000000000000"),
    ("approvals: {required: 1}", "approvals: {required: HUGE}", "approvals.required", "100"),
    ("replicas: 2", "replicas: HUGE", "replicas", "1000"),
    ("resources: {cpus: 1, gpus: 0}", "resources: {cpus: 1, gpus: HUGE}", "resources.gpus", "16"),
    ("version: 3", "version: HUGE", "version", "2147483647"),
    ("schedule: 1h", "schedule: HUGEs", "schedule", "365d"),
    ("threshold: 0.2", "threshold: HUGE", "checks.0.threshold", "1000000000000"),
    ("threshold: 0.1", "threshold: HUGE", "checks.1.threshold", "1000000000000"),
    ("min: 0.7", "min: HUGE", "checks.2.min", "1000000000000"),
    ("window: 1000", "window: HUGE", "checks.2.window", "10000000"),
    ("p95_ms: 200", "p95_ms: HUGE", "checks.3.p95_ms", "3600000"),
]


def _with(old: str, new: str) -> str:
    assert SPEC.count(old) >= 1, old
    return SPEC.replace(old, new.replace("HUGE", HUGE), 1)


def test_the_spec_within_its_bounds_parses() -> None:
    assert isinstance(parse(load_text(SPEC, "m.yaml")), Spec)


@pytest.mark.parametrize(("old", "new", "field", "bound"), BOUNDED, ids=[f"{b[2]}-{i}" for i, b in enumerate(BOUNDED)])
def test_a_number_past_its_bound_is_one_positioned_error_naming_the_bound(
        old: str, new: str, field: str, bound: str) -> None:
    text = _with(old, new)
    with pytest.raises(SpecError) as raised:
        parse(load_text(text, "m.yaml"))
    [error] = raised.value.diagnostics
    assert error.message.startswith(f"{field}: "), error.message
    assert bound in error.message and ("at most" in error.message or "maximum of" in error.message), error.message
    assert len(error.render()) < 200 and "\n" not in error.render()  # one line, the 401 digits cut short
    assert error.position is not None
    line = text.splitlines()[error.position.line - 1]
    assert line[error.position.column - 1:].startswith(HUGE[:10]), (line, error.position)


def test_infinite_and_nan_thresholds_are_refused() -> None:
    for value in (".inf", "-.inf", ".nan"):
        with pytest.raises(SpecError) as raised:
            parse(load_text(_with("value: 0.8}", f"value: {value}}}"), "m.yaml"))
        [error] = raised.value.diagnostics
        assert error.message.startswith("checks.0.value: ")


def test_negative_seeds_are_refused() -> None:
    with pytest.raises(SpecError) as raised:
        parse(load_text(_with("seed: 7", "seed: -1"), "m.yaml"))
    assert [e.message for e in raised.value.diagnostics] == ["seed: must be at least 0, not -1"]


def test_user_params_stay_unbounded() -> None:
    spec = parse(load_text(_with("params: {epochs: 20}", "params: {epochs: HUGE}"), "m.yaml"))
    assert spec.models["m"].params["epochs"] == int(HUGE)


def _schema_property(schema: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    prop = schema["$defs"][model]["properties"][field]
    for choice in prop.get("anyOf", [prop]):
        if choice.get("type") in ("integer", "number"):
            return dict(choice)
    return dict(prop)


@pytest.mark.parametrize(("model", "field", "maximum"), [
    ("NodeShape", "cpus", 1024), ("WorkerGroup", "gpus", 16), ("WorkerGroup", "cpus", 1024),
    ("WorkerGroup", "min", 1000), ("WorkerGroup", "max", 1000), ("Resources", "cpus", 1024),
    ("Resources", "gpus", 16), ("Resources", "workers", 1024), ("Dataset", "retention_days", 36500),
    ("Model", "seed", 4294967295), ("Model", "retries", 10), ("GateCheck", "value", 1e12),
    ("GateCheck", "no_regression", 1e12), ("Approvals", "required", 100), ("Deployment", "replicas", 1000),
    ("Deployment", "version", 2147483647), ("DataDriftCheck", "threshold", 1e12),
    ("PredictionDriftCheck", "threshold", 1e12), ("AccuracyCheck", "min", 1e12),
    ("AccuracyCheck", "window", 10_000_000), ("LatencyCheck", "p95_ms", 3_600_000),
])
def test_the_json_schema_carries_every_bound(model: str, field: str, maximum: float) -> None:
    schema = json.loads((ROOT / "schemas" / "mlops.schema.json").read_text())
    assert _schema_property(schema, model, field)["maximum"] == maximum


def test_validate_refuses_400_zeros_of_replicas_in_one_line(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "raw.csv").write_text("x\n1\n")
    (tmp_path / "pipeline.py").write_text("def train(ctx): ...\n")
    spec = tmp_path / "mlops.yaml"
    spec.write_text(_with("replicas: 2", "replicas: HUGE"))
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--no-color", "-f", str(spec), "validate"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")})
    assert done.returncode == 1
    [line] = [text for text in done.stderr.splitlines() if "error:" in text]
    assert line.startswith(f"{spec}:") or line.startswith("mlops.yaml:")
    assert "deployments.d: replicas: must be at most 1000, not 1000000" in line and len(line) < 200
