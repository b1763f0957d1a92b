"""The CLI through a subprocess, as CI and users run it: exit codes, one-line errors, formats, outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
from schema_validators import validate_junit, validate_sarif

ROOT = Path(__file__).resolve().parents[1]


def mlops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "HOME": os.environ.get("HOME", "/root")})


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("starter") / "demo"
    result = mlops("init", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


def test_init_writes_a_project_that_validates(starter: Path) -> None:
    for name in ("mlops.yaml", "pipeline.py", "data/customers.csv", ".github/workflows/mlops.yml"):
        assert (starter / name).is_file(), name
    assert (starter / ".git").is_dir()
    result = mlops("validate", cwd=starter)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def test_init_points_the_editor_modeline_at_a_schema_it_writes(starter: Path, tmp_path: Path) -> None:
    """The modeline names a schema that exists (beside the spec), is ``mlops schema``'s output and validates the
    spec, as the YAML language server and check-jsonschema read it."""
    first_line = (starter / "mlops.yaml").read_text().splitlines()[0]
    match = MODELINE.match(first_line)
    assert match, first_line
    target = match[1]
    assert "://" not in target and target == "./mlops.schema.json"
    schema = (starter / "mlops.yaml").parent / target  # relative to the spec, as yaml-language-server resolves it
    assert schema.is_file()
    assert json.loads(schema.read_text()) == json.loads(mlops("schema").stdout)
    check = Path(sys.executable).parent / "check-jsonschema"
    valid = subprocess.run([str(check), "--schemafile", str(schema), str(starter / "mlops.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    broken = tmp_path / "mlops.yaml"
    broken.write_text((starter / "mlops.yaml").read_text().replace("owners:", "ownres:", 1))
    invalid = subprocess.run([str(check), "--schemafile", str(schema), str(broken)],
                             capture_output=True, text=True, timeout=120)
    assert invalid.returncode == 1 and "ownres" in invalid.stdout, invalid.stdout + invalid.stderr


def test_init_refuses_to_overwrite(starter: Path) -> None:
    result = mlops("init", str(starter))
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.stderr


def test_global_options_work_before_and_after_the_command(starter: Path) -> None:
    spec = str(starter / "mlops.yaml")
    before = mlops("-f", spec, "--json", "validate")
    after = mlops("validate", "-f", spec, "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout)["ok"] is json.loads(after.stdout)["ok"] is True


def test_user_error_is_one_positioned_line_exit_1_no_traceback(starter: Path, tmp_path: Path) -> None:
    text = (starter / "mlops.yaml").read_text().replace("data: {train: features", "data: {train: featurs")
    spec = starter / "typo.yaml"
    spec.write_text(text)
    result = mlops("-f", str(spec), "validate")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    line_no = next(i for i, line in enumerate(text.splitlines(), 1) if "featurs" in line)
    column = text.splitlines()[line_no - 1].index("featurs") + 1
    assert lines[0] == (f"{spec}:{line_no}:{column}: error: models.churn: "
                        "unknown dataset 'featurs' (did you mean 'features'?)")
    as_json = mlops("-f", str(spec), "--json", "validate")
    assert as_json.returncode == 1
    diagnostic = json.loads(as_json.stdout)["diagnostics"][0]
    assert (diagnostic["line"], diagnostic["column"], diagnostic["address"]) == (line_no, column, "models.churn")


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    result = mlops("-f", str(tmp_path / "none.yaml"), "validate")
    assert result.returncode == 1
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_unknown_option_exits_1_not_2(starter: Path) -> None:
    result = mlops("validate", "--bogus", cwd=starter)
    assert result.returncode == 1


def test_graph_formats(starter: Path) -> None:
    as_json = json.loads(mlops("graph", "--format", "json", cwd=starter).stdout)
    ids = {node["id"] for node in as_json["nodes"]}
    assert {"datasets.customers/snapshot", "datasets.features/transform", "models.churn/train",
            "models.churn/evaluate", "gates.quality/check", "deployments.churn-api/deploy",
            "monitors.churn-drift/watch"} == ids
    for node in as_json["nodes"]:
        assert set(node) >= {"id", "kind", "address", "fingerprint"}
        assert len(node["fingerprint"]) == 64
    assert ["models.churn/train", "models.churn/evaluate"] in as_json["edges"]
    mermaid = mlops("graph", cwd=starter).stdout
    assert mermaid.startswith("flowchart LR") and "models.churn/train" in mermaid and "-->" in mermaid
    dot = mlops("graph", "--format", "dot", cwd=starter).stdout
    assert dot.startswith("digraph mlops") and '"models.churn/train" -> "models.churn/evaluate";' in dot


def test_schema_command_prints_the_committed_schema() -> None:
    result = mlops("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads((ROOT / "schemas" / "mlops.schema.json").read_text())


def _failing_spec(starter: Path) -> Path:
    """The starter with a gate that checks nothing: a baseline error."""
    text = (starter / "mlops.yaml").read_text()
    gate_checks = ('    checks:\n      - {metric: auc, op: ">=", value: 0.7}\n'
                   '      - {metric: auc, no_regression: 0.02}\n')
    assert gate_checks in text
    text = text.replace(gate_checks, "    checks: []\n")
    spec = starter / "no-owners.yaml"
    spec.write_text(text)
    return spec


def test_policy_check_formats(starter: Path, tmp_path: Path) -> None:
    spec = _failing_spec(starter)
    text = mlops("-f", str(spec), "policy", "check")
    assert text.returncode == 1
    assert "error: gates.quality:" in text.stdout
    as_json = json.loads(mlops("-f", str(spec), "policy", "check", "--format", "json").stdout)
    failed = [r for r in as_json["results"] if r["status"] == "fail"]
    assert failed and all(r["rationale"] and r["remediation"] for r in failed)
    sarif = json.loads(mlops("-f", str(spec), "policy", "check", "--format", "sarif").stdout)
    assert sarif["version"] == "2.1.0"
    result = sarif["runs"][0]["results"][0]
    region = result["locations"][0]["physicalLocation"]["region"]
    rule_ids = {r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]}
    assert region["startLine"] >= 1 and result["ruleId"] in rule_ids
    junit = ET.fromstring(mlops("-f", str(spec), "policy", "check", "--format", "junit").stdout)
    assert junit.tag == "testsuites" and junit.findall(".//failure")
    markdown = mlops("-f", str(spec), "policy", "check", "--format", "markdown").stdout
    assert markdown.startswith("### ❌ mlops policy check") and "| `" in markdown
    out = tmp_path / "report.sarif"
    written = mlops("-f", str(spec), "policy", "check", "--format", "sarif", "--output", str(out))
    assert written.returncode == 1 and json.loads(out.read_text())["version"] == "2.1.0"


def test_policy_check_sarif_is_repository_relative_and_valid_from_any_directory(starter: Path) -> None:
    spec = _failing_spec(starter)
    runs = [mlops("-f", spec.name, "policy", "check", "--format", "sarif", cwd=starter),
            mlops("-f", f"../{spec.name}", "policy", "check", "--format", "sarif", cwd=starter / "data"),
            mlops("-f", str(spec), "policy", "check", "--format", "sarif", cwd=ROOT)]
    assert [run.returncode for run in runs] == [1, 1, 1], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    log = json.loads(runs[0].stdout)
    validate_sarif(log)
    run = log["runs"][0]
    assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == starter.resolve().as_uri() + "/"
    assert run["tool"]["driver"]["semanticVersion"] == metadata.version("mlops-gitops")
    result = run["results"][0]
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": spec.name, "uriBaseId": "SRCROOT"}
    region = location["region"]
    lines = spec.read_text().splitlines()
    assert region["endLine"] >= region["startLine"] and region["endColumn"] >= 1
    assert lines[region["startLine"] - 1][region["startColumn"] - 1:].startswith("[]")  # gates.quality's checks: []
    assert result["partialFingerprints"]["mlopsPolicyResult/v1"]


def test_policy_check_junit_is_valid_against_jenkins_junit_10_xsd(starter: Path, tmp_path: Path) -> None:
    result = mlops("-f", str(_failing_spec(starter)), "policy", "check", "--format", "junit")
    assert result.returncode == 1
    validate_junit(result.stdout, tmp_path)


def test_compile_writes_outputs_and_refuses_on_policy_error(starter: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = mlops("compile", "--out", str(out), cwd=starter)
    assert result.returncode == 0, result.stderr
    graph = json.loads((out / "graph.json").read_text())
    assert graph["nodes"] and graph["edges"]
    assert json.loads((out / "policy-report.json").read_text())["ok"] is True
    assert (out / "terraform").is_dir() and not (out / "terraform" / "cdk.tf.json").exists()  # local: no cloud
    refused = tmp_path / "refused"
    failing = mlops("-f", str(_failing_spec(starter)), "compile", "--out", str(refused))
    assert failing.returncode == 1
    assert not (refused / "graph.json").exists()


def test_committed_schemas_are_current() -> None:
    from compiler.schema_export import SCHEMAS, render

    for name in SCHEMAS:
        assert (ROOT / "schemas" / name).read_text() == render(name), f"schemas/{name} is stale: " \
            "run python -m compiler.schema_export"


def test_schemas_declare_draft_2020_12_and_are_valid() -> None:
    for name in ("mlops.schema.json", "policy-pack.schema.json"):
        schema = json.loads((ROOT / "schemas" / name).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_examples_and_policy_packs_validate_against_the_schemas() -> None:
    from compiler.load import load_file

    spec_schema = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "mlops.schema.json").read_text()))
    pack_schema = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schemas" / "policy-pack.schema.json").read_text()))
    examples = sorted(ROOT.glob("examples/*/mlops.yaml"))
    packs = sorted(ROOT.glob("policies/*.yaml"))
    assert len(examples) >= 2 and len(packs) >= 4
    for path in examples:
        errors = [e.message for e in spec_schema.iter_errors(load_file(path).data)]
        assert not errors, f"{path}: {errors}"
    for path in packs:
        errors = [e.message for e in pack_schema.iter_errors(load_file(path).data)]
        assert not errors, f"{path}: {errors}"


def test_compile_of_a_kuberay_s3_project_writes_terraform_and_keeps_terraform_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "terraform").mkdir(parents=True)
    (out / "terraform" / "terraform.tfstate").write_text("{}")
    result = mlops("-f", "examples/fraud/mlops.yaml", "compile", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "terraform" / "cdk.tf.json").read_text())
    assert "helm_release" in document["resource"] and "aws_s3_bucket" in document["resource"]
    assert (out / "terraform" / "terraform.tfstate").read_text() == "{}"
