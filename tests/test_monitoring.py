"""Monitors at run time, on a real local Ray with real Serve deployments, real state and real inference logs.

One project per module is applied once: a source dataset, a derived copy of it (the monitors' reference,
a directory artifact), two models and two realtime deployments. Traffic is sent over HTTP to the Serve
deployments (drift tests) or written with :class:`InferenceWriter` into a copy of the applied project
(accuracy, latency, skipped checks, actions), so that tests do not share their logs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
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
from runtime.monitor.run import due, run_monitors
from runtime.plan.project import plan_project
from runtime.state import audit
from runtime.views.status import project_status
from runtime.workspace import Workspace

PIPELINE = '''
import math

from runtime.context import TrainResult


def build_features(ctx):
    for path in ctx.inputs.values():
        (ctx.output_dir / "features.csv").write_bytes(path.read_bytes())


def train(ctx):  # the features carry the label too: the signature says what a request holds
    return TrainResult(model={"w": float(ctx.params["w"])}, metrics={"auc": 0.9},
                       signature={"x": "float", "color": "string"})


def load_predictor(model_path, params):
    import torch

    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [1 / (1 + math.exp(-w * float(row["x"]))) for row in rows]
'''

COLORS = ["red", "green", "blue"]


def sample(n: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
    """Inputs like the reference's: ``x`` ~ N(shift, 1), ``color`` from a fixed mix."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(shift, 1.0, n)
    colors = rng.choice(COLORS, n, p=[0.5, 0.3, 0.2])
    return [{"x": round(float(x), 4), "color": str(c)} for x, c in zip(xs, colors, strict=True)]


def reference_csv() -> str:
    rows = sample(600, seed=1)
    noise = np.random.default_rng(2).normal(0, 0.5, len(rows))
    lines = ["x,color,label"] + [f"{r['x']},{r['color']},{int(r['x'] + e > 0)}" for r, e in zip(rows, noise,
                                                                                                strict=True)]
    return "\n".join(lines) + "\n"


def spec(webhook: str) -> dict[str, Any]:
    def deployment(model: str, gate: str, route: str) -> dict[str, Any]:
        return {"model": model, "gates": [gate], "resources": {"cpus": 0.25}, "route": route}

    return {
        "apiVersion": "mlops/v1",
        "project": "watched",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"w": 2.0}},
                   "m2": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"w": 1.0}}},
        "gates": {"ok": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.5}]},
                  "ok2": {"model": "m2", "checks": [{"metric": "auc", "op": ">=", "value": 0.5}]}},
        "deployments": {"steady": deployment("m", "ok", "/steady"), "canary": deployment("m2", "ok2", "/canary")},
        "monitors": {
            "steady-watch": {"deployment": "steady", "reference": "features", "schedule": "1h",
                             "checks": [{"type": "data_drift", "method": "psi", "threshold": 0.2},
                                        {"type": "prediction_drift", "method": "ks"},
                                        {"type": "latency", "p95_ms": 10000}],
                             "on_breach": ["alert"], "webhook": webhook},
            "quality": {"deployment": "steady", "reference": "raw",
                        "checks": [{"type": "accuracy", "metric": "auc", "min": 0.75, "window": 250},
                                   {"type": "latency", "p95_ms": 50}],
                        "on_breach": ["retrain"]},
            "guard": {"deployment": "steady", "checks": [{"type": "latency", "p95_ms": 50}],
                      "on_breach": ["rollback", "alert"]},
            "canary-guard": {"deployment": "canary", "checks": [{"type": "latency", "p95_ms": 100}],
                             "on_breach": ["rollback"]},
        },
    }


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    from ray.serve import context

    from runtime.compute import ray_backend

    context._disconnect()  # Serve's cached client outlives ray.shutdown() and is taken for this session's
    ray_backend.connect(None, num_cpus=2)  # (job ids restart at 01000000): drop one an earlier module left
    yield
    ray_backend.shutdown()
    context._disconnect()


class Hook:
    """A tiny webhook receiver on 127.0.0.1: every POST body, parsed."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory, hook: Hook) -> Path:
    """The project, applied once: every deployment serves version 1. Returns its directory."""
    root = tmp_path_factory.mktemp("watched")
    write_project(root, spec(hook.url), files={"data/raw.csv": reference_csv()}, pipeline=PIPELINE)
    outcome = apply_project(load_project(root / "mlops.yaml"))
    assert outcome.result.ok, outcome.result.outcomes
    shutil.copytree(root, root.with_name(root.name + "-pristine"))
    return root


@pytest.fixture
def copy(applied: Path, tmp_path: Path) -> Project:
    """A private copy of the project as it was right after the apply (state and artifacts, no inference logs)."""
    root = tmp_path / "copy"
    shutil.copytree(applied.with_name(applied.name + "-pristine"), root, ignore=shutil.ignore_patterns("inference"))
    return load_project(root / "mlops.yaml")


def post(port: int, route: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps({"instances": rows}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def send(port: int, route: str, rows: list[dict[str, Any]], batch: int = 50) -> None:
    """Send rows in batches, then wait out the writer's background flush interval so that all are on disk."""
    for start in range(0, len(rows), batch):
        assert post(port, route, rows[start:start + batch])["version"] == 1
    time.sleep(1.5)


def score(row: dict[str, Any], w: float = 2.0) -> float:
    """What the pipeline's predictor answers for a row."""
    return 1 / (1 + math.exp(-w * float(row["x"])))


def write_records(project: Project, deployment: str, version: int, inputs: list[dict[str, Any]],
                  latencies: list[float], predictions: list[float] | None = None,
                  request: str | None = None) -> list[str]:
    """Log records the way a serving replica does (predictions: the model's, by default); returns their ids.
    Each row is a request of its own, or all came in the one ``request``."""
    predictions = predictions if predictions is not None else [score(row) for row in inputs]
    writer = InferenceWriter(log_dir(Workspace.of(project).artifact_root, deployment), "test-replica")
    now = time.time()
    ids = [f"req-{version}-{request or ''}{i}" for i in range(len(inputs))]
    for i, (row, prediction, latency) in enumerate(zip(inputs, predictions, latencies, strict=True)):
        writer.write(InferenceRecord(ids[i], now + i * 1e-3, version, row, prediction, latency,
                                     request or ids[i], len(inputs) if request else 1))
    writer.close()
    return ids


mlops = run_cli


def by_type(result: Any) -> dict[str, dict[str, Any]]:
    return {check["type"]: check for check in result.checks}


# --- drift on real traffic ----------------------------------------------------------------------------


def test_same_distribution_traffic_is_ok_then_shifted_traffic_drifts_on_x_and_alerts(
        applied: Path, serve_port: int, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    project = load_project(applied / "mlops.yaml")
    send(serve_port, "/steady", sample(400, seed=11), batch=10)  # 40 requests: a drift window needs 20
    with opened(project) as (_, store):
        [steady] = run_monitors(project, store, ["steady-watch"])
    checks = by_type(steady)
    assert not steady.breached and steady.version == 1 and steady.actions == [] and hook.received == []
    assert {c["status"] for c in steady.checks} == {"ok"}
    drift = checks["data_drift"]
    assert drift["detail"]["drifted_columns"] == [] and set(drift["detail"]["columns"]) == {"x", "color"}
    assert checks["prediction_drift"]["score"] >= 0.05
    assert checks["prediction_drift"]["detail"]["n_reference"] == 600
    assert checks["latency"]["detail"]["n"] == 40 and checks["latency"]["score"] < 10000  # one per request

    send(serve_port, "/steady", sample(1200, seed=12, shift=1.5))  # the world moves: x grows, colours stay
    with caplog.at_level(logging.WARNING, logger="mlops.monitor"), opened(project) as (_, store):
        [shifted] = run_monitors(project, store, ["steady-watch"])
        history = store.monitor_results("steady-watch")
    checks = by_type(shifted)
    assert shifted.breached and [r.breached for r in history] == [False, True]
    drift = checks["data_drift"]
    assert drift["status"] == "breached" and drift["detail"]["drifted_columns"] == ["x"]
    assert drift["detail"]["columns"]["x"]["score"] > 0.2 > drift["detail"]["columns"]["color"]["score"]
    assert checks["prediction_drift"]["status"] == "breached" and checks["prediction_drift"]["score"] < 0.05
    assert checks["latency"]["status"] == "ok"
    assert shifted.actions == ["alert: logged", "alert: webhook 200"]
    assert any(r.name == "mlops.monitor" and "monitors.steady-watch breached" in r.getMessage()
               for r in caplog.records)
    [posted] = hook.received
    assert posted["path"] == "/hook" and posted["type"] == "application/json"
    assert posted["json"]["breached"] is True and posted["json"]["project"] == "watched"
    assert posted["json"]["address"] == "monitors.steady-watch" and len(posted["json"]["checks"]) == 3


# --- synthetic logs in a copy -------------------------------------------------------------------------


def test_accuracy_with_fed_back_labels_then_retrain_on_breach(copy: Project, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    inputs = sample(300, seed=21)
    noise = np.random.default_rng(22).normal(0, 0.5, len(inputs))
    truth = [int(r["x"] + e > 0) for r, e in zip(inputs, noise, strict=True)]
    ids = write_records(copy, "steady", 1, inputs, [5.0] * len(inputs))
    spec_file = str(copy.spec_path)

    with opened(copy) as (_, store):
        [result] = run_monitors(copy, store, ["quality"])
    assert by_type(result)["accuracy"]["status"] == "skipped"
    assert "no labels fed back" in by_type(result)["accuracy"]["reason"]

    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, truth, strict=True))
                      + "unknown-1,1\nunknown-2,0\n")
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "feedback", str(labels))
    assert code == 0
    assert out.strip() == "Stored 302 label(s); 300 match logged predictions; 2 match no logged prediction (yet)."
    with opened(copy) as (_, store):
        [good] = run_monitors(copy, store, ["quality"])
        assert store.open_retrain_requests() == []
    accuracy = by_type(good)["accuracy"]
    assert accuracy["status"] == "ok" and accuracy["score"] > 0.85 and accuracy["detail"]["n"] == 250
    assert by_type(good)["latency"]["status"] == "ok" and not good.breached

    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text("".join(json.dumps({"id": i, "label": 1 - y}) + "\n" for i, y in zip(ids, truth, strict=True)))
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "feedback", str(flipped), "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "stored": 300, "matched": 300, "unmatched": 0}
    with opened(copy) as (_, store):
        [bad] = run_monitors(copy, store, ["quality"])
        assert bad.breached and by_type(bad)["accuracy"]["score"] < 0.15
        assert bad.actions == ["retrain: requested models.m"]
        assert [(r.model, r.reason) for r in store.open_retrain_requests()] == [("m", "monitors.quality")]
        _, plan = plan_project(copy, store)
    change = {c.address: c for c in plan.resource_changes}["models.m"]
    assert change.action == "replace" and "monitor breach: monitors.quality" in change.reasons
    assert {c.address: c.action for c in plan.resource_changes}["models.m2"] == "no-op"


def test_latency_breach_with_no_earlier_version_records_the_rollback_as_impossible(
        copy: Project, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    inputs = sample(100, seed=31)
    write_records(copy, "steady", 1, inputs, [float(ms) for ms in range(1, 101)])
    with caplog.at_level(logging.WARNING, logger="mlops.monitor"), opened(copy) as (_, store):
        [result] = run_monitors(copy, store, ["guard"])
        state = store.get_deployment("steady")
    latency = by_type(result)["latency"]
    assert result.breached and latency["score"] == pytest.approx(95.05) and latency["threshold"] == 50
    assert result.actions[0].startswith("rollback impossible: no earlier version of models.m passed the gates")
    assert result.actions[1:] == ["alert: logged"]
    assert state is not None and state.live_version == 1 and state.pinned_version is None
    assert any("rollback impossible" in r.getMessage() for r in caplog.records if r.name == "mlops.monitor")


def test_checks_without_data_are_skipped_not_breached(copy: Project) -> None:
    with opened(copy) as (_, store):
        results = run_monitors(copy, store)
    assert [r.monitor for r in results] == list(copy.spec.monitors)
    for result in results:
        assert not result.breached and result.actions == []
        for check in result.checks:
            assert check["status"] == "skipped" and check["score"] is None
            assert "no inference records of deployments." in check["reason"]


def test_a_check_that_cannot_run_is_an_error_not_a_breach(copy: Project) -> None:
    body = yaml.safe_load(copy.spec_path.read_text())
    body["monitors"]["steady-watch"]["checks"] = [{"type": "data_drift", "method": "ks", "columns": ["color"]}]
    copy.spec_path.write_text(yaml.safe_dump(body, sort_keys=False))
    project = load_project(copy.spec_path)
    write_records(project, "steady", 1, sample(50, seed=41), [1.0] * 50)
    with opened(project) as (_, store):
        [result] = run_monitors(project, store, ["steady-watch"])
    [check] = result.checks
    assert not result.breached and check["status"] == "error" and "needs a numeric column" in check["reason"]


def test_due_follows_each_schedule(copy: Project) -> None:
    with opened(copy) as (_, store):
        assert due(copy, store, 1000.0) == list(copy.spec.monitors)
        run_monitors(copy, store, ["steady-watch", "quality"], now=1000.0)
        assert due(copy, store, 1000.0 + 3599) == ["guard", "canary-guard"]
        assert set(due(copy, store, 1000.0 + 3600)) == set(copy.spec.monitors)
        ran = run_monitors(copy, store, now=1000.0 + 60, force=False)
        assert [r.monitor for r in ran] == ["guard", "canary-guard"]
        assert [r.at for r in store.monitor_results("steady-watch")] == [1000.0]


def test_monitor_cli_run_history_and_unknown_name(copy: Project, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = str(copy.spec_path)
    write_records(copy, "steady", 1, sample(200, seed=51), [float(60 + ms % 40) for ms in range(200)])
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "run", "guard")
    assert code == 0  # a breach is a finding, not a CLI error
    assert "monitors.guard on deployments.steady (version 1): BREACHED" in out
    assert "latency" in out and "breached" in out and "actions: rollback impossible" in out
    assert mlops(capsys, "-f", spec_file, "monitor", "run", "guard", "--detailed-exitcode")[0] == 2
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "run", "monitors.steady-watch", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["breached"] is False
    assert [c["status"] for c in payload["results"][0]["checks"]] == ["ok", "ok", "ok"]
    code, out, err = mlops(capsys, "-f", spec_file, "monitor", "run", "gaurd")
    assert code == 1 and out == "" and err.strip() == "error: unknown monitor 'gaurd' (did you mean 'guard'?)"
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "history", "guard", "--json")
    history = json.loads(out)["results"]
    assert code == 0 and [r["breached"] for r in history] == [True, True]
    code, out, _ = mlops(capsys, "-f", spec_file, "monitor", "history", "guard", "--limit", "1")
    assert code == 0 and "monitors.guard" in out and out.count("rollback impossible") == 1


def test_feedback_file_errors_name_the_line(copy: Project, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = str(copy.spec_path)
    bad = tmp_path / "labels.csv"
    bad.write_text("id,label\nreq-1,1\nreq-2,maybe\n")
    code, out, err = mlops(capsys, "-f", spec_file, "monitor", "feedback", str(bad))
    assert code == 1 and out == "" and err.strip() == f"{bad}:3:1: error: label 'maybe' is not a number"
    headless = tmp_path / "headless.csv"
    headless.write_text("req-1,1\n")
    code, _, err = mlops(capsys, "-f", spec_file, "monitor", "feedback", str(headless))
    assert code == 1 and "the header must name the columns id and label" in err
    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"id": "req-1", "label": true}\n["req-2", 0]\n')
    code, _, err = mlops(capsys, "-f", spec_file, "monitor", "feedback", str(lines))
    assert code == 1 and err.strip() == f'{lines}:2:1: error: each line must be an object with "id" and "label"'
    with opened(copy) as (_, store):
        assert store.feedback(["req-1", "req-2"]) == {}  # nothing stored from a bad file


def test_reference_tables_read_csv_directories_and_jsonl(tmp_path: Path) -> None:
    from runtime.monitor.tables import columns_of, read_rows, values_array

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text("x,color\n1,red\n2.5,\n")
    (tmp_path / "parts" / "b.csv").write_text("x,color\n,blue\n")
    columns = columns_of(read_rows(tmp_path / "parts"))
    assert columns["x"].dtype == float and columns["x"][:2].tolist() == [1.0, 2.5] and math.isnan(columns["x"][2])
    assert columns["color"].tolist() == ["red", None, "blue"]
    snapshot = tmp_path / "0123abcd"  # a content-addressed object has no suffix: the dataset's format says
    snapshot.write_text('{"x": 1, "color": "red"}\n{"x": 2}\n')
    assert read_rows(snapshot, ".jsonl") == [{"x": 1, "color": "red"}, {"x": 2}]
    assert values_array([np.float32(0.25), 1, None]).dtype == float  # predictors may answer numpy scalars
    assert values_array([True, "a"]).tolist() == ["True", "a"]
    (tmp_path / "parts" / "c.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="mixes data formats"):
        read_rows(tmp_path / "parts")


def test_webhook_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from runtime.monitor.actions import post_webhook

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    with caplog.at_level(logging.ERROR, logger="mlops.monitor"):
        assert post_webhook(url, {"breached": True}, "monitors.x").startswith("alert: webhook failed: ")
        assert post_webhook("file:///etc/passwd", {}, "monitors.x") == \
            "alert: webhook not posted: file:///etc/passwd is not an http(s) URL"
    assert [r.levelname for r in caplog.records if r.name == "mlops.monitor"] == ["ERROR", "ERROR"]


# --- rollback on a breach, on Ray Serve ---------------------------------------------------------------


def test_one_request_however_big_cannot_by_itself_make_a_drift(copy: Project) -> None:
    shifted = sample(1000, seed=71, shift=3.0)
    write_records(copy, "steady", 1, shifted, [5.0] * 1000, request="flood")  # one request, 1,000 odd rows
    with opened(copy) as (_, store):
        [alone] = run_monitors(copy, store, ["steady-watch"])
    checks = by_type(alone)
    assert not alone.breached and alone.actions == []
    assert checks["data_drift"]["status"] == checks["prediction_drift"]["status"] == "skipped"
    assert checks["data_drift"]["reason"].startswith("1 request(s) logged for the live version; a drift check judges "
                                                     "a window of at least 20 (min_requests)")
    assert checks["latency"]["detail"]["n"] == 1  # its latency counts once, not 1,000 times
    for k in range(30):  # then 30 ordinary requests of 20 rows
        write_records(copy, "steady", 1, sample(20, seed=100 + k), [5.0] * 20, request=f"ordinary{k}-")
    with opened(copy) as (_, store):
        [mixed] = run_monitors(copy, store, ["steady-watch"])
    checks = by_type(mixed)
    assert checks["data_drift"]["status"] == "ok", checks["data_drift"]  # the flood counts as 20 rows of 620
    assert not mixed.breached and checks["latency"]["detail"]["n"] == 31


def test_breach_rolls_back_to_the_newest_earlier_version_that_passed(copy: Project, serve_port: int) -> None:
    body = yaml.safe_load(copy.spec_path.read_text())
    body["models"]["m2"]["params"]["w"] = 3.0
    copy.spec_path.write_text(yaml.safe_dump(body, sort_keys=False))
    project = load_project(copy.spec_path)
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    assert post(serve_port, "/canary", [{"x": 1.0, "color": "red"}])["version"] == 2
    write_records(project, "canary", 2, sample(50, seed=61), [500.0] * 50)
    with opened(project) as (_, store):
        [result] = run_monitors(project, store, ["canary-guard"])
        state = store.get_deployment("canary")
        trail = audit.log(store)
    assert result.breached and result.version == 2
    assert result.actions == ["rollback: deployments.canary 2 -> 1"]
    assert state is not None and state.live_version == 1 and state.pinned_version == 1
    assert state.pin_reason == "monitor breach: monitors.canary-guard"
    answer = post(serve_port, "/canary", [{"x": 1.0, "color": "red"}])
    assert answer["version"] == 1 and answer["predictions"] == [pytest.approx(score({"x": 1.0}, w=1.0))]
    assert trail[-1].action == "rollback" and trail[-1].payload["reason"] == "monitor breach: monitors.canary-guard"
    with opened(project) as (_, store):
        shown = {r.address: r for r in project_status(project, store).resources}["deployments.canary"]
    assert (shown.sync, shown.health) == ("Synced", "Healthy")
    assert shown.detail == ("Ray Serve: version 1, 1 replica(s), RUNNING; "
                            f"rolled back (monitor breach: monitors.canary-guard) at http://127.0.0.1:{serve_port}/canary")
