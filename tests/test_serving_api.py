"""A realtime deployment is a real HTTP API: RFC 9457 errors a client can act on, an input signature, limits,
bearer tokens, an OpenAPI document Schemathesis finds no 5xx in, and an inference log that cannot leak.

The contract's parts are checked as plain functions (:mod:`runtime.endpoint.contract`, no Ray); then one project is
applied on a real Ray Serve and every kind of request is sent over real HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.errors import MlopsError
from runtime.endpoint import contract as serving_api
from runtime.endpoint.contract import ApiConfig, Problem

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))
TOKEN = "s3cret-token-for-tests"
COLUMNS = {"x": "float", "y": "float", "note": "string", "email": "string"}
CONFIG = ApiConfig("api", "/api", 1, COLUMNS, "training data", max_body_bytes=20_000, max_instances=50,
                   pii_columns=("email",), max_logged_row_bytes=128)


# --- the contract as functions ------------------------------------------------------------------


def refused(call: Any, *args: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(("body", "detail"), [
    (b"", "the body is empty"),
    (b"{", "Expecting property name enclosed in double quotes at line 1 column 2"),
    (b'{"instances": [{"x": NaN}]}', "NaN is not a JSON number (RFC 8259)"),
    (b'{"instances": [{"x": Infinity}]}', "Infinity is not a JSON number (RFC 8259)"),
    (b'{"instances": [{"x": -Infinity}]}', "-Infinity is not a JSON number (RFC 8259)"),
    (b'{"instances": [{"x": 1e999}]}', "the number 1e999 is out of range"),
    (b'{"instances": [{"note": "\xff"}]}', "the body is not UTF-8 (byte 25)"),
    (b"[" * 100_000, serving_api.MAX_DEPTH_MESSAGE),
    (b'{"x": ' + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
])
def test_a_body_that_is_not_strict_json_is_a_400_saying_why(body: bytes, detail: str) -> None:
    problem = refused(serving_api.strict_json, body)
    assert (problem.status, problem.slug) == (400, "invalid-json")
    assert detail in problem.detail


def test_rows_must_be_an_object_of_instances_matching_the_signature() -> None:
    assert refused(serving_api.rows_of, CONFIG, [1]).status == 400
    no_instances = refused(serving_api.rows_of, CONFIG, {"rows": []})
    assert no_instances.detail == "the body must have `instances`, an array of rows"
    assert refused(serving_api.rows_of, CONFIG, {"instances": []}).status == 422
    too_many = refused(serving_api.rows_of, CONFIG, {"instances": [{}] * 51})
    assert (too_many.status, too_many.extra["limit_instances"]) == (413, 50)
    mismatch = refused(serving_api.rows_of, CONFIG, {"instances": [
        {"x": 1, "y": "2", "note": "n", "email": "e", "phone": "p"}, {"x": True, "note": None, "email": "e"}, 3]})
    assert mismatch.status == 422 and mismatch.slug == "signature-mismatch"
    assert mismatch.extra["errors"] == [
        {"instance": 0, "column": "phone", "problem": "unexpected column"},
        {"instance": 0, "column": "y", "problem": "expected number, got string"},
        {"instance": 1, "column": "y", "problem": "missing"},
        {"instance": 1, "column": "x", "problem": "expected number, got boolean"},
        {"instance": 1, "column": "note", "problem": "expected string, got null"},
        {"instance": 2, "column": None, "problem": "expected an object, got number"},
    ]
    assert mismatch.detail == "instance 0, column 'phone': unexpected column (and 5 more)"
    rows = [{"x": 1, "y": 2.5, "note": "n", "email": "e"}]
    assert serving_api.rows_of(CONFIG, {"instances": rows}) == rows


def test_route_method_media_type_length_and_token_checks() -> None:
    assert serving_api.check_route("POST", "") == "predict"
    assert serving_api.check_route("GET", "/openapi.json") == "document"
    assert refused(serving_api.check_route, "GET", "").extra == {"allow": "POST"}
    assert refused(serving_api.check_route, "POST", "/nope").status == 404
    assert refused(serving_api.check_content_type, "text/plain").status == 415
    assert refused(serving_api.check_content_type, None).detail.endswith("not none")
    serving_api.check_content_type("application/json; charset=utf-8")
    assert refused(serving_api.check_declared_length, CONFIG, "20001").status == 413
    assert refused(serving_api.check_declared_length, CONFIG, "lots").status == 400
    secured = ApiConfig("api", "/api", 1, token_hashes=(serving_api.token_hash(TOKEN),))
    serving_api.check_token(secured, f"Bearer {TOKEN}")
    serving_api.check_token(CONFIG, None)  # no token asked for
    assert "needs a bearer token" in refused(serving_api.check_token, secured, None).detail
    assert refused(serving_api.check_token, secured, "Bearer wrong").detail == "the bearer token is not accepted"
    assert refused(serving_api.check_token, secured, f"Basic {TOKEN}").status == 401


def test_a_prediction_that_is_not_a_finite_number_is_a_422_not_invalid_json() -> None:
    problem = refused(serving_api.answer, [0.5, float("nan")], ["a", "b"], 1)
    assert (problem.status, problem.extra["instance"]) == (422, 1)
    assert json.loads(serving_api.answer([0.5], ["a"], 3)) == {"predictions": [0.5], "ids": ["a"], "version": 3}


def test_only_the_signature_s_columns_less_pii_are_logged_and_big_rows_lose_their_inputs() -> None:
    assert serving_api.logged_inputs(CONFIG, {"x": 1, "email": "a@b.c", "junk": "z"}) == {"x": 1}
    assert serving_api.logged_inputs(CONFIG, {"x": 1, "note": "n" * 500}) is None
    everything_personal = ApiConfig("api", "/api", 1, COLUMNS, pii_columns=("*",))
    assert serving_api.logged_inputs(everything_personal, {"x": 1}) == {}


def test_a_deployment_served_beyond_loopback_without_auth_is_refused_at_validate(
        tmp_path: Path, make_project: Any) -> None:
    spec = _spec(auth=None)
    spec["cluster"] = {"serve_host": "0.0.0.0"}
    with pytest.raises(MlopsError) as caught:
        load_project(make_project(tmp_path, spec, files={"data/raw.csv": DATA}, pipeline=PIPELINE))
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.message.startswith("served beyond loopback (cluster.serve_host is 0.0.0.0) without `auth`")
    assert diagnostic.address == "deployments.api"
    spec["deployments"]["api"]["auth"] = {"token_env": "API_TOKEN"}
    load_project(make_project(tmp_path / "ok", spec, files={"data/raw.csv": DATA}, pipeline=PIPELINE))


# --- on a real Ray Serve ----------------------------------------------------------------------------

PIPELINE = '''
import math

import torch

from runtime.context import TrainResult


def train(ctx):
    return TrainResult(model={"w": torch.tensor(2.0)}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    w = float(torch.load(model_path, weights_only=True)["w"])

    def predict(rows):
        if any(row["x"] == 13 for row in rows):
            raise RuntimeError("unlucky number")
        return [math.nan if row["x"] == 7 else w * row["x"] + row["y"] for row in rows]

    return predict
'''
DATA = "x,y,note,email\n1,2,first,a@example.com\n3,4.5,second,b@example.com\n"


def _spec(auth: dict[str, str] | None = None) -> dict[str, Any]:
    deployment: dict[str, Any] = {"model": "m", "replicas": 1, "route": "/api",
                                  "limits": {"max_body_bytes": 20_000, "max_instances": 50,
                                             "max_logged_row_bytes": 128}}
    if auth is not None:
        deployment["auth"] = auth
    return {"apiVersion": "mlops/v1", "project": "api",
            "datasets": {"raw": {"path": "data/raw.csv", "pii": ["email"]}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}}},
            "deployments": {"api": deployment}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve_port: int) -> Iterator[Path]:
    """The project applied on a real Ray Serve, its deployment asking for ``TOKEN``."""
    from conftest import write_project

    from runtime.apply.operations import apply_project
    from runtime.compute import ray_backend

    root = tmp_path_factory.mktemp("served")
    write_project(root, _spec(auth={"token_env": "API_TOKEN"}), files={"data/raw.csv": DATA}, pipeline=PIPELINE)
    os.environ["API_TOKEN"] = TOKEN
    ray_backend.connect(None, num_cpus=2)
    try:
        outcome = apply_project(load_project(root / "mlops.yaml"))
        assert outcome.result.ok, outcome.result.outcomes
        yield root
    finally:
        ray_backend.shutdown()
        os.environ.pop("API_TOKEN", None)




def send(port: int, body: bytes | None = None, *, method: str = "POST", path: str = "/api",
         headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict[str, str], Any]:
    """One real HTTP request; (status, headers, the JSON body or the raw bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})}
    sent = {k: v for k, v in sent.items() if v}
    try:
        connection.request(method, path, body=iter([body]) if chunked and body is not None else body,
                           headers=sent, encode_chunked=chunked)
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    try:
        return response.status, answer_headers, json.loads(raw)
    except ValueError:
        return response.status, answer_headers, raw


def rows(*items: dict[str, Any]) -> bytes:
    return json.dumps({"instances": list(items)}).encode()


ROW = {"x": 1.0, "y": 2, "note": "ok", "email": "c@example.com"}


def test_a_well_formed_request_is_answered(served: Path, serve_port: int) -> None:
    status, headers, body = send(serve_port, rows(ROW, {**ROW, "x": 3}))
    assert status == 200, body
    assert body["predictions"] == [4.0, 8.0] and body["version"] == 1 and len(body["ids"]) == 2
    assert headers["content-type"] == "application/json" and headers["x-request-id"]


@pytest.mark.parametrize(("request_args", "status", "slug", "detail"), [
    ({"body": b"{not json"}, 400, "invalid-json", "Expecting property name"),
    ({"body": b"[]"}, 400, "not-an-object", "must be a JSON object"),
    ({"body": b'{"instances": [{"x": NaN, "y": 1, "note": "", "email": ""}]}'}, 400, "invalid-json", "NaN"),
    ({"body": b'{"instances": [{"x": 1e999, "y": 1, "note": "", "email": ""}]}'}, 400, "invalid-json", "1e999"),
    ({"body": b'{"instances": [{"note": "\xc3\x28"}]}'}, 400, "invalid-json", "not UTF-8"),
    ({"body": b"[" * 15_000}, 400, "invalid-json", "nested too deeply"),
    ({"body": b""}, 400, "invalid-json", "empty"),
    ({"body": None, "method": "GET"}, 405, "method-not-allowed", "GET is not allowed here"),
    ({"body": b"{}", "method": "PUT"}, 405, "method-not-allowed", "PUT is not allowed here"),
    ({"body": rows(ROW), "headers": {"Content-Type": "text/plain"}}, 415, "unsupported-media-type", "text/plain"),
    ({"body": rows(ROW), "headers": {"Content-Type": ""}}, 415, "unsupported-media-type", "not none"),
    ({"body": rows(*[ROW] * 51)}, 413, "too-many-instances", "51 instances is over this deployment's limit of 50"),
    ({"body": b" " * 30_000 + rows(ROW)}, 413, "body-too-large", "limit of 20000 bytes"),
    ({"body": b" " * 30_000 + rows(ROW), "chunked": True}, 413, "body-too-large", "limit of 20000 bytes"),
    ({"body": rows({"x": 1, "y": 2, "note": "n"})}, 422, "signature-mismatch", "column 'email': missing"),
    ({"body": rows({**ROW, "phone": "123"})}, 422, "signature-mismatch", "column 'phone': unexpected column"),
    ({"body": rows({**ROW, "x": "one"})}, 422, "signature-mismatch", "column 'x': expected number, got string"),
    ({"body": rows({**ROW, "x": {"deep": [1]}})}, 422, "signature-mismatch", "expected number, got object"),
    ({"body": b'{"instances": [1]}'}, 422, "signature-mismatch", "expected an object, got number"),
    ({"body": b'{"instances": {}}'}, 422, "invalid-body", "non-empty array"),
    ({"body": rows(ROW), "headers": {"Authorization": ""}}, 401, "unauthorized", "needs a bearer token"),
    ({"body": rows(ROW), "headers": {"Authorization": "Bearer nope"}}, 401, "unauthorized", "not accepted"),
    ({"body": rows(ROW), "path": "/api/other"}, 404, "not-found", "no such path: /other"),
    ({"body": rows({**ROW, "x": 7})}, 422, "non-finite-prediction", "instance 0: the model's prediction is nan"),
])
def test_a_client_s_mistake_is_a_problem_document_naming_it(
        served: Path, serve_port: int, request_args: dict[str, Any], status: int, slug: str, detail: str) -> None:
    got, headers, body = send(serve_port, **request_args)
    assert got == status, body
    assert headers["content-type"] == "application/problem+json"
    assert body["type"] == serving_api.PROBLEM_TYPE + slug and body["status"] == status
    assert detail in body["detail"], body["detail"]
    assert body["request_id"] == headers["x-request-id"]
    if status == 405:
        assert headers["allow"] in ("POST", "GET, HEAD")
    if status == 401:
        assert headers["www-authenticate"].startswith("Bearer")


def test_a_failure_of_the_model_s_code_is_a_500_whose_request_id_finds_the_traceback(
        served: Path, serve_port: int) -> None:
    status, headers, body = send(serve_port, rows({**ROW, "x": 13}))
    assert status == 500 and body["type"] == serving_api.PROBLEM_TYPE + "model-failed"
    request_id = body["request_id"]
    assert headers["x-request-id"] == request_id
    _, _, mine = send(serve_port, rows({**ROW, "x": 13}), headers={"X-Request-Id": "client-chosen-id-1"})
    assert mine["request_id"] == "client-chosen-id-1"  # a client's own id finds its failure too
    assert f"mlops logs deployments.api --request {request_id}" in body["detail"]
    assert "unlucky" not in json.dumps(body)  # the model's message stays in the log
    logs = subprocess.run([MLOPS, "logs", "deployments.api", "--request", request_id], cwd=served,
                          capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert f"request {request_id}  RuntimeError: unlucky number" in logs.stdout
    assert "Traceback (most recent call last)" in logs.stdout and 'raise RuntimeError("unlucky number")' in logs.stdout
    unknown = subprocess.run([MLOPS, "logs", "deployments.api", "--request", "0" * 32], cwd=served,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1


def test_each_deployment_serves_its_openapi_document_and_models_show_prints_the_signature(
        served: Path, serve_port: int) -> None:
    status, _, document = send(serve_port, method="GET", path="/api/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    schema = document["paths"]["/api"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row = schema["properties"]["instances"]["items"]
    assert row["properties"] == {"x": {"type": "number"}, "y": {"type": "number"}, "note": {"type": "string"},
                                 "email": {"type": "string"}}
    assert schema["properties"]["instances"]["maxItems"] == 50 and document["security"] == [{"bearer": []}]
    assert send(serve_port, method="GET", path="/api/openapi.json", headers={"Authorization": ""})[0] == 401
    shown = subprocess.run([MLOPS, "models", "show", "m"], cwd=served, capture_output=True, text=True, timeout=60)
    assert "input signature (from the training data): x float, y float, note string, email string" in shown.stdout


def test_schemathesis_finds_no_server_error(served: Path, serve_port: int, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).with_name("schemathesis"))
    done = subprocess.run(
        [cli, "run", f"http://127.0.0.1:{serve_port}/api/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "100", "--header", f"Authorization: Bearer {TOKEN}", "--phases", "examples,fuzzing",
         "--mode", "all", "--seed", "7", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated is not None and int(generated.group(1)) >= 50, done.stdout[-2000:]
    assert "No issues found" in done.stdout


def test_the_inference_log_keeps_the_signature_s_columns_less_pii_and_the_request_s_latency(
        served: Path, serve_port: int) -> None:
    from runtime.monitor.inference_log import log_dir, read
    from runtime.workspace import Workspace

    long_note = {**ROW, "note": "n" * 300}
    status, _, body = send(serve_port, rows(ROW, long_note, {**ROW, "x": 5}))
    assert status == 200, body
    directory = log_dir(Workspace.of(load_project(served / "mlops.yaml")).artifact_root, "api")
    deadline_records = []
    for _ in range(100):  # the writer flushes within a second
        deadline_records = [r for r in read(directory) if r.id in body["ids"]]
        if len(deadline_records) == 3:
            break
        import time
        time.sleep(0.1)
    by_id = {r.id: r for r in deadline_records}
    first, big, third = (by_id[i] for i in body["ids"])
    assert first.inputs == {"x": 1.0, "y": 2, "note": "ok"}  # the e-mail (pii) is not logged
    assert big.inputs == {}  # over max_logged_row_bytes: logged without its inputs
    assert first.request_id == big.request_id == third.request_id and first.rows == 3
    assert first.latency_ms == big.latency_ms == third.latency_ms > 0  # the request's, not divided by rows


def test_tokens_come_from_the_environment_or_a_file_and_a_missing_one_is_one_line(
        tmp_path: Path, make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.endpoint.config import api_config, tokens
    from runtime.state.records import ModelVersion

    project = load_project(make_project(tmp_path, _spec(auth={"token_env": "API_TOKEN"}),
                                        files={"data/raw.csv": DATA}, pipeline=PIPELINE))
    auth = project.spec.deployments["api"].auth
    monkeypatch.delenv("API_TOKEN", raising=False)
    with pytest.raises(MlopsError) as caught:
        tokens(project, "api", auth)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.message == ("deployments.api: auth.token_env API_TOKEN is not set or empty in the environment "
                                  "of this apply; set it to the token callers send")
    monkeypatch.setenv("API_TOKEN", "old-one, new-one")  # rotating: both are accepted
    assert tokens(project, "api", auth) == ["old-one", "new-one"]
    version = ModelVersion("m", 1, "fp", "sha256:" + "0" * 64,
                           signature={"columns": [["x", "float"]], "source": "trainer"})
    config = api_config(project, "api", version)
    assert config.token_hashes == (serving_api.token_hash("old-one"), serving_api.token_hash("new-one"))
    assert "old-one" not in repr(config)  # only hashes reach the replicas
    assert (config.columns, config.signature_source, config.pii_columns) == ({"x": "float"}, "trainer", ("email",))
    assert (config.max_body_bytes, config.max_instances, config.max_logged_row_bytes) == (20_000, 50, 128)

    spec = _spec(auth={"token_file": "secrets/tokens"})
    spec["deployments"]["api"]["columns"] = {"x": "float", "y": "int"}  # declared in the spec: wins
    project = load_project(make_project(tmp_path / "file", spec, files={"data/raw.csv": DATA}, pipeline=PIPELINE))
    with pytest.raises(MlopsError, match=r"auth.token_file .*secrets/tokens cannot be read: No such file"):
        api_config(project, "api", version)
    (tmp_path / "file" / "secrets").mkdir()
    (tmp_path / "file" / "secrets" / "tokens").write_text("\nfrom-a-file\n")
    config = api_config(project, "api", version)
    assert config.token_hashes == (serving_api.token_hash("from-a-file"),)
    assert (config.columns, config.signature_source) == ({"x": "float", "y": "int"}, "spec")


def test_a_signature_comes_from_the_trainer_then_the_dataset_schema_then_the_training_csv(tmp_path: Path) -> None:
    from runtime.endpoint.signature import of_training

    data = tmp_path / "train"
    data.mkdir()
    (data / "features.csv").write_text("amount,plan,active,label\n1.5,basic,true,0\n2,plus,false,1\n")
    inferred = of_training(None, data, None)
    assert inferred is not None and inferred.source == "training data"
    assert inferred.columns == {"amount": "float", "plan": "string", "active": "bool", "label": "float"}
    declared = of_training(["amount", "plan"], data, None)  # names: typed from the data
    assert declared is not None and (declared.columns, declared.source) == (
        {"amount": "float", "plan": "string"}, "trainer")
    schema = of_training(None, data, {"amount": "float", "plan": "category"})
    assert schema is not None and (schema.columns, schema.source) == (
        {"amount": "float", "plan": "category"}, "dataset schema")
    assert of_training({"amount": "int"}, None, None).columns == {"amount": "int"}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown column type 'number'"):
        of_training({"amount": "number"}, data, None)
    with pytest.raises(ValueError, match="a list of column names or a mapping"):
        of_training(42, data, None)
    (tmp_path / "blob.npz").write_bytes(b"\x00\x01")
    assert of_training(None, tmp_path / "blob.npz", None) is None  # nothing to read columns from
