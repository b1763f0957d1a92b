"""The shipped examples: they load, resolve, pass their policy packs, build the expected graph,
regenerate their committed data byte for byte, and their pipelines really train a model that
clears the example's own gate."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import compiler
from compiler.policy.evaluate import evaluate
from compiler.policy.packs import discover, select
from runtime.context import RunContext

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

EXPECTED_NODES = {
    "churn": {
        "datasets.transactions/snapshot",
        "datasets.features/transform",
        "models.churn/train",
        "models.churn/evaluate",
        "gates.churn-quality/check",
        "deployments.churn-api/deploy",
        "monitors.churn-drift/watch",
    },
    "fraud": {
        "datasets.transactions/snapshot",
        "datasets.incoming/snapshot",
        "datasets.features/transform",
        "datasets.incoming-features/transform",
        "models.fraud/train[hidden=32,lr=0.01]",
        "models.fraud/train[hidden=32,lr=0.003]",
        "models.fraud/train[hidden=64,lr=0.01]",
        "models.fraud/train[hidden=64,lr=0.003]",
        "models.fraud/select",
        "models.fraud/evaluate",
        "gates.fraud-quality/check",
        "deployments.fraud-api/deploy",
        "deployments.fraud-nightly/deploy",
        "monitors.fraud-api-watch/watch",
        "monitors.fraud-nightly-watch/watch",
    },
}


def _project(name: str) -> compiler.Project:
    return compiler.load_project(EXAMPLES / name / "mlops.yaml")


def _pipeline(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples.<name>.pipeline`` the way the spec names it (from the repository root)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module(f"examples.{name}.pipeline")


@pytest.mark.parametrize("name", sorted(EXPECTED_NODES))
def test_example_resolves_into_the_expected_graph(name: str) -> None:
    project = _project(name)
    assert project.root == ROOT
    graph = compiler.build_graph(project)
    assert {node.id for node in graph.nodes()} == EXPECTED_NODES[name]
    assert all(node.fingerprint for node in graph.nodes())
    for target, path in project.callables.items():
        assert path == ROOT / "examples" / name / "pipeline.py", target


@pytest.mark.parametrize("name", sorted(EXPECTED_NODES))
def test_example_passes_its_policy_packs(name: str) -> None:
    project = _project(name)
    report = compiler.check_policies(project)
    assert {"baseline", "gdpr", "eu-ai-act"} <= set(report.packs)
    failures = [f"{r.policy.id} ({r.policy.severity}) {r.address}: {r.message} [{r.detail}]"
                for r in report.failures]
    assert report.errors == [], "\n".join(failures)
    assert failures == [], "warnings are fixable in a shipped example:\n" + "\n".join(failures)
    assert [d.render() for d in report.waiver_problems if d.severity == "error"] == []


def test_fraud_example_waiver_applies_until_it_expires() -> None:
    project = _project("fraud")
    packs = select(discover([]), project.spec.compliance.frameworks, None)

    def status(today: date) -> str:
        report = evaluate(project, packs, today=today)
        (result,) = [r for r in report.results
                     if r.policy.id == "AIACT-011" and r.address == "monitors.fraud-nightly-watch"]
        return result.status

    assert status(date(2026, 1, 1)) == "waived"
    assert status(date(2028, 1, 1)) == "fail"
    assert project.spec.compliance.risk == "high"
    assert {"security"} <= set(project.spec.compliance.frameworks)


@pytest.mark.parametrize(("name", "out", "committed"), [
    ("churn", "transactions.csv", ["transactions.csv"]),        # --out is the CSV file
    ("fraud", ".", ["transactions.csv", "incoming.csv"]),       # --out is the directory of both
])
def test_generate_data_reproduces_the_committed_csv(name: str, out: str, committed: list[str],
                                                   tmp_path: Path) -> None:
    script = EXAMPLES / name / "generate_data.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path / out)],
                   check=True, capture_output=True, timeout=60)
    for file in committed:
        fresh = (tmp_path / file).read_bytes()
        assert fresh == (EXAMPLES / name / "data" / file).read_bytes(), f"{name}/data/{file} differs"
        assert fresh.count(b"\n") > 100


@dataclass
class Trained:
    """What one transform -> train -> evaluate pass produced."""

    train_metrics: dict[str, float]
    metrics: dict[str, float]
    state: dict[str, torch.Tensor]


def _train_and_evaluate(pipeline: ModuleType, tmp_path: Path, source: Path, schema: Mapping[str, str] | None,
                        params: Mapping[str, Any], seed: int) -> Trained:
    """transform -> train -> save -> evaluate, as the runtime runs them, on the real data."""
    features = tmp_path / "features"
    pipeline.build_features(RunContext(inputs={"transactions": source}, output_dir=features))
    header = (features / "features.csv").read_text().splitlines()[0].split(",")
    assert schema is not None and header == list(schema), "the transform's columns differ from the schema"
    roles = {"train": features, "eval": features}
    training = RunContext(inputs=roles, output_dir=tmp_path / "train", params=dict(params), seed=seed)
    result = pipeline.train(training)
    model_path = tmp_path / "model.pt"
    torch.save(result.model, model_path)
    evaluation = RunContext(inputs=roles, output_dir=tmp_path / "eval", params=dict(params), seed=seed,
                            model_path=model_path)
    return Trained(result.metrics, pipeline.evaluate(evaluation), result.model)


def _threshold(project: compiler.Project, gate: str, metric: str) -> float:
    (check,) = [c for c in project.spec.gates[gate].checks if c.metric == metric and c.op == ">="]
    assert check.value is not None
    return check.value


def test_churn_pipeline_trains_a_model_that_clears_its_gate(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project("churn")
    model = project.spec.models["churn"]
    pipeline = _pipeline("churn", monkeypatch)
    source = project.dataset_path("transactions")
    schema = project.spec.datasets["features"].schema_
    first = _train_and_evaluate(pipeline, tmp_path / "a", source, schema, model.params, model.seed)
    assert first.metrics["auc"] >= _threshold(project, "churn-quality", "auc")
    assert first.metrics["logloss"] <= 0.5
    assert 0.5 < first.train_metrics["auc"] <= 1.0
    assert first.metrics["rows"] > 200
    again = _train_and_evaluate(pipeline, tmp_path / "b", source, schema, model.params, model.seed)
    assert again.train_metrics == first.train_metrics and again.metrics == first.metrics
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)


def test_churn_auc_is_the_rank_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = _pipeline("churn", monkeypatch)
    import numpy as np

    labels = np.array([0, 0, 1, 1, 0, 1])
    assert pipeline.auc(labels, np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])) == 1.0
    assert pipeline.auc(labels, np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])) == 0.0
    assert pipeline.auc(labels, np.full(6, 0.5)) == 0.5  # all tied
    # 9 pairs: (pos 0.4 vs neg 0.5) is the one wrong ordering, (0.5 vs 0.5) a tie -> (7 + 0.5) / 9
    scores = np.array([0.1, 0.5, 0.4, 0.5, 0.2, 0.9])
    assert pipeline.auc(labels, scores) == pytest.approx(7.5 / 9)


def test_fraud_pipeline_trains_one_trial_and_scores_incoming(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project("fraud")
    model = project.spec.models["fraud"]
    assert model.sweep is not None
    pipeline = _pipeline("fraud", monkeypatch)
    params = {**model.params, "lr": model.sweep["lr"][0], "hidden": model.sweep["hidden"][0]}
    trained = _train_and_evaluate(pipeline, tmp_path, project.dataset_path("transactions"),
                                  project.spec.datasets["features"].schema_, params, model.seed)
    assert {"auc", "average_precision"} <= set(trained.train_metrics)
    assert trained.metrics["auc"] >= _threshold(project, "fraud-quality", "auc")
    assert trained.metrics["average_precision"] >= _threshold(project, "fraud-quality", "average_precision")
    incoming = tmp_path / "incoming"
    source = project.dataset_path("incoming")
    pipeline.build_features(RunContext(inputs={"incoming": source}, output_dir=incoming))
    header, *rows = (incoming / "features.csv").read_text().splitlines()
    declared = project.spec.datasets["incoming-features"].schema_
    assert declared is not None and header.split(",") == list(declared)
    assert len(rows) == 500 and all(row.split(",")[1] == "score" for row in rows)
