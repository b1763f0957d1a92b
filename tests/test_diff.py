"""``mlops diff BASE [HEAD]`` over real git repositories: resources, implied actions, policy changes, formats."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from conftest import run_cli

from compiler import gitref

ROOT = Path(__file__).resolve().parents[1]
SIGNATURE = pygit2.Signature("Test", "test@example.com", 1_700_000_000, 0)

BASE: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "owners": ["team:ml"],
    "datasets": {
        "raw": {"path": "data/raw.csv"},  # no schema: BASE-010 fails
        "features": {"from": ["raw"], "transform": "pipeline:build_features"},
    },
    "models": {
        "churn": {"train": "pipeline:train", "evaluate": "pipeline:evaluate", "data": {"train": "features"},
                  "params": {"lr": 0.01},
                  "retries": 2, "description": "Predicts churn"},
    },
    "deployments": {"scoring": {"model": "churn", "mode": "batch", "input": "features"}},  # ungated: BASE-003
}
FILES = {"data/raw.csv": "a\n1\n2\n"}


def commit(root: Path, message: str) -> str:
    """Stage everything (deletions too) and commit on the current branch."""
    repo = pygit2.Repository(str(root))
    index = repo.index
    index.remove_all(["*"])  # then add what is there now: deleted files leave the index
    index.add_all()
    index.write()
    tree = index.write_tree()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", SIGNATURE, SIGNATURE, message, tree, parents))


def branch(root: Path, name: str) -> None:
    """Create ``name`` at HEAD and make it the current branch (the files stay as they are)."""
    repo = pygit2.Repository(str(root))
    repo.branches.local.create(name, repo.head.peel(pygit2.Commit))
    repo.set_head(f"refs/heads/{name}")


@pytest.fixture
def repository(tmp_path: Path, make_project: Any) -> Any:
    """``repository(base=BASE, files=None)``: a repository whose ``main`` holds ``base`` (a project made by
    ``make_project``); the current branch is ``feature``, at ``main``."""

    def make(base: Any = BASE, files: dict[str, str | bytes] | None = None) -> Path:
        return _init(tmp_path / "repo", make_project, base, files)

    return make


def _init(root: Path, make_project: Any, base: Any, files: dict[str, str | bytes] | None) -> Path:
    make_project(root, base, files={**FILES, **(files or {})}, git=False)
    pygit2.init_repository(str(root), initial_head="main")
    commit(root, "base")
    branch(root, "feature")
    return root


def change(root: Path, spec: Any, files: dict[str, str | bytes] | None = None, message: str = "change") -> str:
    """Rewrite the spec (and files) and commit them on the current branch."""
    (root / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False) if not isinstance(spec, str) else spec)
    for relative, content in (files or {}).items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return commit(root, message)


def edited(**changes: Any) -> dict[str, Any]:
    """A deep copy of BASE with ``section={...}`` replacements."""
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return spec


def mlops(root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process, in ``root``; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(root)
    return run_cli(capsys, *args)


def diff_json(root: Path, capsys: Any, monkeypatch: Any, *args: str) -> dict[str, Any]:
    code, out, err = mlops(root, capsys, monkeypatch, "diff", *args, "--format", "json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def by_address(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["address"]: r for r in result["resources"]}


def test_a_param_change_retrains_the_model_and_redeploys_what_serves_it(repository: Any, capsys: Any,
                                                                        monkeypatch: Any) -> None:
    root = repository()
    models = copy.deepcopy(BASE["models"])
    models["churn"]["params"]["lr"] = 0.02
    change(root, edited(models=models))
    code, out, err = mlops(root, capsys, monkeypatch, "diff", "main", "feature")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "mlops diff main..feature"
    assert "~ models.churn will retrain: params.lr: 0.01 -> 0.02" in lines
    assert "~ deployments.scoring will redeploy: upstream changed: models.churn" in lines
    assert not any("datasets." in line for line in lines)  # upstream of the change: untouched
    assert lines[-1] == "main..feature: 0 to add, 2 to change, 0 to destroy · policy: 0 new failures, 0 resolved"
    resources = by_address(diff_json(root, capsys, monkeypatch, "main", "feature"))
    assert resources["models.churn"]["reasons"] == ["params.lr: 0.01 -> 0.02"]
    assert resources["models.churn"]["action"] == "replace"
    assert resources["models.churn"]["effect"] == "will retrain"


def test_an_added_dataset_and_a_removed_deployment(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    datasets = {**BASE["datasets"], "extra": {"path": "data/extra.csv", "schema": {"b": "int"}}}
    change(root, edited(datasets=datasets, deployments={}), files={"data/extra.csv": "b\n3\n"})
    code, out, _ = mlops(root, capsys, monkeypatch, "diff", "main", "feature")
    assert code == 0
    assert "+ datasets.extra will be created" in out.splitlines()
    assert "- deployments.scoring will be removed" in out.splitlines()
    assert "models.churn" not in out  # nothing about the model changed
    result = diff_json(root, capsys, monkeypatch, "main", "feature")
    resources = by_address(result)
    assert {a: (r["change"], r["action"]) for a, r in resources.items()} == {
        "datasets.extra": ("added", "create"), "deployments.scoring": ("removed", "delete")}
    assert [(p["policy"], p["address"], p["other"]) for p in result["policy"]["resolved"]] == [
        ("BASE-003", "deployments.scoring", "absent")]
    assert result["summary"]["added"] == 1 and result["summary"]["removed"] == 1


def test_a_change_to_the_pipeline_module_reruns_its_steps(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    source = (root / "pipeline.py").read_text()
    change(root, BASE, files={"pipeline.py": source.replace('"auc", 0.9', '"auc", 0.91')})
    resources = by_address(diff_json(root, capsys, monkeypatch, "main", "feature"))
    assert resources["models.churn"]["effect"] == "will retrain"
    assert resources["models.churn"]["reasons"][0] == "code changed: pipeline.py"
    assert resources["datasets.features"]["effect"] == "will rebuild"
    assert resources["datasets.features"]["reasons"] == ["code changed: pipeline.py"]
    assert "datasets.raw" not in resources


def test_a_data_change_resnapshots_and_cascades(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    change(root, BASE, files={"data/raw.csv": "a\n1\n2\n3\n"})
    resources = by_address(diff_json(root, capsys, monkeypatch, "main", "feature"))
    assert resources["datasets.raw"]["effect"] == "will re-snapshot"
    assert resources["datasets.raw"]["reasons"] == ["data changed: datasets.raw"]
    assert resources["datasets.features"]["reasons"] == ["data changed: datasets.raw"]
    assert resources["models.churn"]["reasons"] == ["data changed: datasets.features"]


def test_policy_failures_new_and_resolved(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    models = copy.deepcopy(BASE["models"])
    del models["churn"]["description"]  # BASE-006 starts failing
    datasets = copy.deepcopy(BASE["datasets"])
    datasets["raw"]["schema"] = {"a": "int"}  # BASE-010 is fixed
    change(root, edited(models=models, datasets=datasets))
    code, out, _ = mlops(root, capsys, monkeypatch, "diff", "main", "feature")
    assert code == 0
    assert "new failure: BASE-006 (warning) models.churn: models.churn has no description" in out.splitlines()
    assert "resolved: BASE-010 (warning) datasets.raw: datasets.raw declares no column schema" in out.splitlines()
    result = diff_json(root, capsys, monkeypatch, "main", "feature")
    new, = result["policy"]["new"]
    assert (new["policy"], new["address"], new["other"], new["file"]) == (
        "BASE-006", "models.churn", "pass", "feature:mlops.yaml")
    resolved, = result["policy"]["resolved"]
    assert (resolved["policy"], resolved["address"], resolved["other"]) == ("BASE-010", "datasets.raw", "pass")
    assert result["summary"]["policy_still_failing"] == 1  # BASE-003 on the ungated deployment
    # A description is a setting: the model is changed, but only the schema's re-snapshot makes it retrain.
    churn = by_address(result)["models.churn"]
    assert churn["reasons"] == ['description: "Predicts churn" -> null', "data changed: datasets.features"]


def test_a_settings_only_change_updates_in_place(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    deployments = {"scoring": {**BASE["deployments"]["scoring"], "replicas": 3}}
    models = copy.deepcopy(BASE["models"])
    models["churn"]["description"] = "Predicts churn within 30 days"
    change(root, edited(deployments=deployments, models=models))
    resources = by_address(diff_json(root, capsys, monkeypatch, "main", "feature"))
    assert resources["deployments.scoring"]["action"] == "update"
    assert resources["deployments.scoring"]["reasons"] == ["replicas: 1 -> 3"]
    assert resources["models.churn"]["action"] == "update"
    assert resources["models.churn"]["effect"] == "will be updated in place"


MARKDOWN_SUMMARY = ("**mlops diff** main..feature: 2 to add, 2 to change, 0 to destroy · "
                    "policy: 1 new failure, 1 resolved")


def pr_scenario(repository: Any) -> Path:
    """A pull request that adds a dataset, changes a param, drops a description and gates the deployment."""
    root = repository()
    spec = edited()
    spec["datasets"]["extra"] = {"path": "data/extra.csv", "schema": {"b": "int"}}
    spec["models"]["churn"]["params"]["lr"] = 0.02
    del spec["models"]["churn"]["description"]
    spec["gates"] = {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8},
                                                            {"metric": "auc", "no_regression": 0.01}]}}
    spec["deployments"]["scoring"]["gates"] = ["quality"]
    change(root, spec, files={"data/extra.csv": "b\n3\n"})
    return root


def test_markdown_is_a_ready_pr_comment(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = pr_scenario(repository)
    code, out, _ = mlops(root, capsys, monkeypatch, "diff", "main", "feature", "--format", "markdown")
    assert code == 0
    assert out.splitlines()[0] == MARKDOWN_SUMMARY
    assert "<details><summary>Changes (4)</summary>" in out and "</details>" in out
    assert ('| ~ | <code>models.churn</code> | will retrain | description: "Predicts churn" -&gt; null<br>'
            "params.lr: 0.01 -&gt; 0.02 |") in out.splitlines()
    mermaid = out.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert mermaid.startswith("flowchart LR\n")
    assert '["~ models.churn<br/>will retrain"]' in mermaid
    assert '["+ gates.quality<br/>will be created"]' in mermaid
    assert '["datasets.features"]' in mermaid  # an unchanged direct neighbour, unstyled
    assert "datasets.raw" not in mermaid  # two steps away from every change
    assert "classDef changed" in mermaid and "classDef added" in mermaid
    assert "| BASE-006 | warning | <code>models.churn</code> | models.churn has no description |" in out
    assert "| BASE-003 | warning | <code>deployments.scoring</code> |" in out  # resolved by the gate


def test_json_has_the_stable_shape(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = pr_scenario(repository)
    result = diff_json(root, capsys, monkeypatch, "main", "feature")
    head = str(pygit2.Repository(str(root)).revparse_single("feature").id)
    assert set(result) == {"format_version", "base", "head", "resources", "policy", "summary"}
    assert result["head"] == {"ref": "feature", "commit": head, "spec": True}
    assert set(result["policy"]) == {"new", "resolved"}
    for resource in result["resources"]:
        assert {"address", "change", "action", "reasons"} <= set(resource)
        assert resource["change"] in ("added", "changed", "removed") and resource["reasons"]
    assert result["summary"] == {"added": 2, "changed": 2, "removed": 0, "unchanged": 5, "policy_new": 1,
                                 "policy_resolved": 1, "policy_still_failing": 1}
    code, out, _ = mlops(root, capsys, monkeypatch, "--json", "diff", "main", "feature")
    assert code == 0 and json.loads(out) == result  # the global --json flag


def test_without_head_the_working_tree_is_compared(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    code, out, _ = mlops(root, capsys, monkeypatch, "diff", "main")
    assert code == 0 and "No resource changes." in out
    assert out.splitlines()[-1].startswith("main..working tree: 0 to add, 0 to change, 0 to destroy")
    models = copy.deepcopy(BASE["models"])
    models["churn"]["params"]["lr"] = 0.5
    (root / "mlops.yaml").write_text(yaml.safe_dump(edited(models=models), sort_keys=False))  # not committed
    code, out, _ = mlops(root, capsys, monkeypatch, "diff", "main")
    assert "~ models.churn will retrain: params.lr: 0.01 -> 0.5" in out.splitlines()
    assert mlops(root, capsys, monkeypatch, "diff", "HEAD", "--detailed-exitcode")[0] == 2


def test_ranges_and_revision_syntax(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    models = copy.deepcopy(BASE["models"])
    models["churn"]["params"]["lr"] = 0.02
    change(root, edited(models=models))
    for args in (("main..feature",), ("HEAD~1", "HEAD"), ("main...feature",)):
        resources = by_address(diff_json(root, capsys, monkeypatch, *args))
        assert resources["models.churn"]["reasons"] == ["params.lr: 0.01 -> 0.02"], args
    assert diff_json(root, capsys, monkeypatch, "feature", "main")["resources"][0]["reasons"] == [
        "params.lr: 0.02 -> 0.01"]


def test_output_file_and_detailed_exitcode(repository: Any, tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    root = pr_scenario(repository)
    target = tmp_path / "comment.md"
    code, out, err = mlops(root, capsys, monkeypatch, "diff", "main", "feature", "--format", "markdown",
                           "--output", str(target), "--detailed-exitcode")
    assert code == 2 and out == "" and f"wrote {target}" in err
    assert target.read_text().startswith("**mlops diff** main..feature:")
    assert mlops(root, capsys, monkeypatch, "diff", "feature", "feature", "--detailed-exitcode")[0] == 0


def test_a_spec_missing_at_base_adds_everything(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository()
    (root / "mlops.yaml").rename(root / "other.yaml")
    commit(root, "move the spec away")
    (root / "other.yaml").rename(root / "mlops.yaml")
    commit(root, "and back")
    result = diff_json(root, capsys, monkeypatch, "HEAD~1", "HEAD")
    assert result["base"]["spec"] is False
    assert {r["change"] for r in result["resources"]} == {"added"}
    assert len(result["resources"]) == 4


def test_unchanged_large_and_lfs_files_are_not_data_changes(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(gitref, "LARGE_BLOB_BYTES", 1000)  # so that a small test file counts as large
    big = "a\n" + "1\n" * 1000
    real = b"a\n7\n8\n"
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(real).hexdigest()}\n"
               f"size {len(real)}\n")
    spec = edited(datasets={**BASE["datasets"], "big": {"path": "data/big.csv"},
                            "lfs": {"path": "data/lfs.csv"}})
    root = repository(spec, files={"data/big.csv": big, "data/lfs.csv": pointer})
    (root / "data/lfs.csv").write_bytes(real)  # what `git lfs pull` leaves in the working tree
    assert diff_json(root, capsys, monkeypatch, "main")["resources"] == []
    (root / "data/big.csv").write_text(big + "2\n")
    changed = by_address(diff_json(root, capsys, monkeypatch, "main"))
    assert changed["datasets.big"]["reasons"] == ["data changed: datasets.big"]
    assert "datasets.lfs" not in changed


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"],
                                                       "HOME": str(root)})


def test_an_unknown_ref_is_a_one_line_error(repository: Any) -> None:
    root = repository()
    result = cli(root, "diff", "nope", "feature")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: unknown revision 'nope': not a branch, tag or commit of {root.resolve()}"]


def test_an_invalid_spec_at_a_ref_is_a_positioned_error_naming_the_ref(repository: Any, tmp_path: Path) -> None:
    root = repository()
    text = (root / "mlops.yaml").read_text().replace("owners:", "ownerz:")
    change(root, text)
    result = cli(root, "diff", "main", "feature")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("feature:mlops.yaml:3:1: error: ") and "ownerz" in line
    assert str(tmp_path) not in line  # never the scratch directory


TEAM_PACK = {"apiVersion": "mlops/v1", "kind": "PolicyPack", "name": "team", "policies": [{
    "id": "TEAM-001", "title": "Models retry three times", "severity": "error", "applies_to": "models",
    "schema": {"properties": {"retries": {"minimum": 3}}}, "message": "{address} retries only {retries} times",
    "rationale": "Our spot nodes are pre-empted often.", "remediation": "Set `retries: 3`."}]}


def test_a_spec_in_a_subfolder_with_its_own_policy_pack(repository: Any, capsys: Any, monkeypatch: Any) -> None:
    root = repository(files={"ml/data/raw.csv": "a\n1\n"})  # data/raw.csv, relative to the spec
    (root / "ml").mkdir(exist_ok=True)
    (root / "mlops.yaml").rename(root / "ml/mlops.yaml")
    commit(root, "move the spec to ml/")
    base = str(pygit2.Repository(str(root)).head.target)
    pack = root / "ml/policies/team.yaml"
    pack.parent.mkdir()
    team = copy.deepcopy(TEAM_PACK)
    pack.write_text(yaml.safe_dump(team, sort_keys=False))
    commit(root, "a team policy pack")
    result = diff_json(root, capsys, monkeypatch, "-f", "ml/mlops.yaml", base[:10], "HEAD")
    assert result["resources"] == []
    new, = result["policy"]["new"]
    assert (new["policy"], new["address"], new["severity"], new["file"]) == (
        "TEAM-001", "models.churn", "error", "HEAD:ml/mlops.yaml")
    team["policies"][0]["severity"] = "fatal"
    pack.write_text(yaml.safe_dump(team, sort_keys=False))
    commit(root, "a broken pack")
    code, _, err = mlops(root, capsys, monkeypatch, "-f", "ml/mlops.yaml", "diff", base[:10], "HEAD")
    line, = err.strip().splitlines()
    assert code == 1 and line.startswith("HEAD:ml/policies/team.yaml:") and "severity" in line
