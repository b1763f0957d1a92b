"""The ``mlops init`` starter's own code on its own data, called directly (no Ray): features, training on
the train rows, evaluation on the test rows, and the serving function the deployment runs."""

from __future__ import annotations

import csv
import importlib.util
import math
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import torch

from compiler import load_project
from compiler.starter import create_starter
from runtime.context import RunContext
from runtime.monitor.tables import columns_of, read_rows

RAW = ("tenure_months", "monthly_spend", "support_calls")
CURL = ("curl -s -X POST http://127.0.0.1:8000/churn-api -H 'content-type: application/json' -d "
        """'{"instances": [{"tenure_months": 12, "monthly_spend": 70.5, "support_calls": 3}]}'""")


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("starter") / "demo"
    create_starter(directory, "churn demo")
    return directory


def pipeline_of(directory: Path) -> ModuleType:
    """The starter's ``pipeline.py``, imported under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"starter_pipeline_{uuid.uuid4().hex}", directory / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_starter_trains_on_train_rows_scores_test_rows_and_serves_raw_rows(starter: Path,
                                                                              tmp_path: Path) -> None:
    pipeline = pipeline_of(starter)
    project = load_project(starter / "mlops.yaml")
    features = tmp_path / "features"
    features.mkdir()
    transform = RunContext({"customers": starter / "data" / "customers.csv"}, features,
                           params=dict(project.spec.datasets["features"].params))
    pipeline.build_features(transform)

    # A table the monitors read: the raw columns, the label and a deterministic 80/20 split.
    rows = read_rows(features)
    assert list(rows[0]) == [*RAW, "churned", "split"] and len(rows) == 600
    columns = columns_of(rows)
    assert all(columns[name].dtype == float for name in (*RAW, "churned"))
    splits = [row["split"] for row in rows]
    assert set(splits) == {"train", "test"} and 0.15 < splits.count("test") / len(rows) < 0.25
    again = tmp_path / "again"
    again.mkdir()
    pipeline.build_features(RunContext(transform.inputs, again, params=transform.params))
    assert (again / "features.csv").read_bytes() == (features / "features.csv").read_bytes()
    [drift] = project.spec.monitors["churn-drift"].checks
    assert project.spec.monitors["churn-drift"].reference == "features"
    assert getattr(drift, "columns", None) == list(RAW)  # the request's columns, compared like with like

    # Training: on the train rows only, the standardisation saved in the state_dict.
    model = project.spec.models["churn"]
    data = {"train": features, "eval": features}
    result = pipeline.train(RunContext(data, tmp_path / "train", params=dict(model.params), seed=model.seed))
    state = result.model
    assert all(isinstance(tensor, torch.Tensor) for tensor in state.values())
    train_rows = torch.tensor([[r[name] for name in RAW] for r in rows if r["split"] == "train"])
    every_row = torch.tensor([[r[name] for name in RAW] for r in rows])
    assert torch.allclose(state["mean"], train_rows.mean(dim=0))
    assert torch.allclose(state["std"], train_rows.std(dim=0))
    assert not torch.allclose(state["mean"], every_row.mean(dim=0))
    assert result.metrics["train_auc"] > 0.7

    model_path = tmp_path / "model.pt"
    torch.save(state, model_path)
    evaluation = RunContext(data, tmp_path / "evaluate", model_path=model_path)
    metrics = pipeline.evaluate(evaluation)
    test_rows = [r for r in rows if r["split"] == "test"]
    assert metrics["rows"] == len(test_rows) == splits.count("test")
    assert metrics["auc"] > 0.7  # the gate's threshold, on rows the model never saw
    assert math.isfinite(metrics["logloss"]) and 0.0 < metrics["accuracy"] <= 1.0

    # Serving: rows with the raw columns (as the README's request sends them) -> churn probabilities.
    predict = pipeline.load_predictor(model_path, dict(model.params))
    answers = predict([{"tenure_months": 12, "monthly_spend": 70.5, "support_calls": 3},
                       {"tenure_months": 70, "monthly_spend": 10.0, "support_calls": 0, "extra": "ignored"}])
    assert len(answers) == 2 and all(isinstance(p, float) and 0.0 < p < 1.0 for p in answers)
    assert answers[0] > 0.5 > answers[1]  # short tenure, high spend, many calls churn
    assert predict([]) == []
    scores = predict([{name: r[name] for name in RAW} for r in test_rows])
    assert pipeline.auc(torch.tensor(scores).numpy(), torch.tensor([r["churned"] for r in test_rows]).numpy()) \
        == pytest.approx(metrics["auc"])
    with pytest.raises(ValueError, match="monthly_spend"):
        predict([{"tenure_months": 12, "support_calls": 3}])
    with pytest.raises(ValueError, match="support_calls"):
        predict([{"tenure_months": 12, "monthly_spend": 70.5, "support_calls": "many"}])


class Payload:
    """Not a tensor: unpickling it would run this module's code."""


def test_the_starter_refuses_a_model_file_that_would_unpickle_code(starter: Path, tmp_path: Path) -> None:
    pipeline = pipeline_of(starter)
    bad = tmp_path / "model.pt"
    torch.save({"mean": torch.zeros(3), "std": torch.ones(3), "payload": Payload()}, bad)
    with pytest.raises(Exception, match="Weights only load failed"):
        pipeline.load_predictor(bad, {})


def test_the_starter_readme_shows_the_request_and_answer(starter: Path) -> None:
    readme = (starter / "README.md").read_text()
    assert readme.startswith("# churn-demo\n")
    assert CURL in readme
    assert '{"predictions": [...], "ids": [...], "version": N}' in readme
    assert "mlops down" in readme and "mlops status" in readme
    spec = load_project(starter / "mlops.yaml").spec
    assert spec.project == "churn-demo"
    assert (spec.deployments["churn-api"].route or "/churn-api") == "/churn-api"


def test_init_keeps_an_existing_readme(tmp_path: Path) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "README.md").write_text("# my project\n")
    written = create_starter(directory)
    assert (directory / "README.md").read_text() == "# my project\n"
    assert directory / "README.md" not in written and directory / "mlops.yaml" in written
    with (directory / "data" / "customers.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == (*RAW, "churned")
