"""Resolution: references with did-you-mean, cycles, paths, callables, the repository root, views."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.errors import Diagnostic, Position, ResolveError
from compiler.resolve import Project

MakeProject = Callable[..., Path]

DATA = {
    "data/raw.csv": "email,amount\na@example.com,1.0\n",
    "data/clean.csv": "amount,country\n1.0,ie\n",
    "data/scores.csv": "amount\n2.0\n",
}


def base_spec() -> dict[str, Any]:
    """Every section and every reference kind, all valid."""
    return {
        "apiVersion": "mlops/v1",
        "project": "demo",
        "datasets": {
            "raw": {
                "path": "data/raw.csv",
                "schema": {"email": "string", "amount": "float"},
                "pii": ["email"],
            },
            "clean": {"path": "data/clean.csv", "schema": {"amount": "float", "country": "string"}},
            "features": {"from": ["raw"], "transform": "pipeline:build_features"},
            "enriched": {"from": ["features", "clean"], "transform": "pipeline:build_features"},
            "scores": {"path": "data/scores.csv"},
        },
        "models": {
            "churn": {
                "train": "pipeline:train",
                "evaluate": "pipeline:evaluate",
                "data": {"train": "enriched", "eval": "features"},
            },
            "plain": {"train": "pipeline:train", "data": {"train": "clean"}},
        },
        "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
        "deployments": {
            "api": {"model": "churn", "gates": ["quality"]},
            "nightly": {"model": "churn", "mode": "batch", "input": "scores"},
        },
        "monitors": {
            "drift": {
                "deployment": "api",
                "reference": "clean",
                "checks": [{"type": "data_drift", "columns": ["amount"]}],
            },
        },
    }


def _set(spec: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def _resolve_errors(spec_path: Path) -> list[Diagnostic]:
    with pytest.raises(ResolveError) as info:
        load_project(spec_path, "mlops.yaml")
    return info.value.diagnostics


def _find(errors: list[Diagnostic], fragment: str) -> Diagnostic:
    matches = [e for e in errors if fragment in e.message]
    assert len(matches) == 1, "\n".join(e.render() for e in errors)
    return matches[0]


def _where(spec_path: Path, token: str) -> Position:
    """Where the one whole-word occurrence of ``token`` is written in the spec."""
    found = [
        Position("mlops.yaml", number, match.start() + 1)
        for number, line in enumerate(spec_path.read_text(encoding="utf-8").splitlines(), start=1)
        for match in re.finditer(rf"(?<![\w./-]){re.escape(token)}(?![\w])", line)
    ]
    assert len(found) == 1, f"{token!r} occurs {len(found)} times"
    return found[0]


def test_base_spec_resolves(tmp_path: Path, make_project: MakeProject) -> None:
    project = load_project(make_project(tmp_path, base_spec(), DATA))
    assert project.addresses() == [
        "datasets.raw",
        "datasets.clean",
        "datasets.features",
        "datasets.enriched",
        "datasets.scores",
        "models.churn",
        "models.plain",
        "gates.quality",
        "deployments.api",
        "deployments.nightly",
        "monitors.drift",
    ]


# --- references --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "typo", "address", "message"),
    [
        (
            ("datasets", "features", "from", 0),
            "raww",
            "datasets.features",
            "unknown dataset 'raww' (did you mean 'raw'?)",
        ),
        (
            ("models", "churn", "data", "eval"),
            "featurs",
            "models.churn",
            "unknown dataset 'featurs' (did you mean 'features'?)",
        ),
        (
            ("gates", "quality", "model"),
            "chrun",
            "gates.quality",
            "unknown model 'chrun' (did you mean 'churn'?)",
        ),
        (
            ("deployments", "nightly", "model"),
            "chrun",
            "deployments.nightly",
            "unknown model 'chrun' (did you mean 'churn'?)",
        ),
        (
            ("deployments", "nightly", "input"),
            "scorse",
            "deployments.nightly",
            "unknown dataset 'scorse' (did you mean 'scores'?)",
        ),
        (
            ("deployments", "api", "gates", 0),
            "qualty",
            "deployments.api",
            "unknown gate 'qualty' (did you mean 'quality'?)",
        ),
        (
            ("monitors", "drift", "deployment"),
            "apii",
            "monitors.drift",
            "unknown deployment 'apii' (did you mean 'api'?)",
        ),
        (
            ("monitors", "drift", "reference"),
            "claen",
            "monitors.drift",
            "unknown dataset 'claen' (did you mean 'clean'?)",
        ),
        (
            ("datasets", "raw", "pii", 0),
            "emial",
            "datasets.raw",
            "PII column 'emial' is not in schema (did you mean 'email'?)",
        ),
        (
            ("monitors", "drift", "checks", 0, "columns", 0),
            "amout",
            "monitors.drift",
            "column 'amout' is not in datasets.clean's schema (did you mean 'amount'?)",
        ),
    ],
)
def test_unknown_reference_is_positioned_with_a_suggestion(
    tmp_path: Path,
    make_project: MakeProject,
    path: tuple[str | int, ...],
    typo: str,
    address: str,
    message: str,
) -> None:
    spec_path = make_project(tmp_path, _set(base_spec(), path, typo), DATA)
    error = _find(_resolve_errors(spec_path), message)
    assert error.address == address
    assert error.position == _where(spec_path, typo)


def test_unknown_reference_far_from_any_name_has_no_suggestion(
    tmp_path: Path, make_project: MakeProject
) -> None:
    spec_path = make_project(tmp_path, _set(base_spec(), ("gates", "quality", "model"), "zzzzzz"), DATA)
    error = _find(_resolve_errors(spec_path), "unknown model")
    assert error.message == "unknown model 'zzzzzz'"


def test_gate_of_another_model_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    spec = _set(base_spec(), ("deployments", "api", "model"), "plain")
    spec_path = make_project(tmp_path, spec, DATA)
    error = _find(_resolve_errors(spec_path), "gate 'quality' checks model 'churn', not 'plain'")
    assert error.address == "deployments.api"
    dash = _where(spec_path, "- quality")
    assert error.position == Position(dash.file, dash.line, dash.column + 2)


def test_two_realtime_deployments_on_one_route_are_refused(tmp_path: Path, make_project: MakeProject) -> None:
    spec = base_spec()
    spec["deployments"]["api"]["route"] = "/score"
    spec["deployments"]["web"] = {"model": "churn", "route": "/score"}
    error = _find(_resolve_errors(make_project(tmp_path, spec, DATA)), "route /score is already used")
    assert error.address == "deployments.web"
    assert "deployments.api" in error.message


def test_unknown_gate_model_is_reported_once(tmp_path: Path, make_project: MakeProject) -> None:
    spec_path = make_project(tmp_path, _set(base_spec(), ("gates", "quality", "model"), "chrun"), DATA)
    assert [e.address for e in _resolve_errors(spec_path)] == ["gates.quality"]


def test_every_problem_is_reported_at_once(tmp_path: Path, make_project: MakeProject) -> None:
    spec = _set(base_spec(), ("monitors", "drift", "deployment"), "apii")
    spec = _set(spec, ("models", "plain", "train"), "missing_module:train")
    spec = _set(spec, ("datasets", "scores", "path"), "data/absent.csv")
    errors = _resolve_errors(make_project(tmp_path, spec, DATA))
    assert {e.address for e in errors} == {"monitors.drift", "models.plain", "datasets.scores"}


# --- cycles ------------------------------------------------------------------------------


def _derived(*parents: str) -> dict[str, Any]:
    return {"from": list(parents), "transform": "pipeline:build_features"}


def test_cycle_message_names_the_whole_loop(tmp_path: Path, make_project: MakeProject) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "demo", "datasets": {"a": _derived("b"), "b": _derived("a")}}
    spec_path = make_project(tmp_path, spec)
    errors = _resolve_errors(spec_path)
    assert [e.message for e in errors] == ["dependency cycle: datasets.a -> datasets.b -> datasets.a"]
    assert errors[0].address == "datasets.a"


def test_longer_cycle_behind_a_valid_dataset(tmp_path: Path, make_project: MakeProject) -> None:
    datasets = {"src": {"path": "s.csv"}, "a": _derived("src", "c"), "b": _derived("a"), "c": _derived("b")}
    spec_path = make_project(
        tmp_path, {"apiVersion": "mlops/v1", "project": "demo", "datasets": datasets}, {"s.csv": "x\n1\n"}
    )
    errors = _resolve_errors(spec_path)
    assert [e.message for e in errors] == [
        "dependency cycle: datasets.a -> datasets.c -> datasets.b -> datasets.a"
    ]


def test_self_cycle(tmp_path: Path, make_project: MakeProject) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "demo", "datasets": {"a": _derived("a")}}
    errors = _resolve_errors(make_project(tmp_path, spec))
    assert [e.message for e in errors] == ["dependency cycle: datasets.a -> datasets.a"]


def test_diamond_is_not_a_cycle(tmp_path: Path, make_project: MakeProject) -> None:
    datasets = {
        "src": {"path": "s.csv"},
        "l": _derived("src"),
        "r": _derived("src"),
        "top": _derived("l", "r"),
    }
    project = load_project(
        make_project(
            tmp_path, {"apiVersion": "mlops/v1", "project": "demo", "datasets": datasets}, {"s.csv": "x\n1\n"}
        )
    )
    assert project.upstream["top"] == ["l", "src", "r"]


# --- dataset paths -----------------------------------------------------------------------


def _one_dataset(path: str) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "demo", "datasets": {"raw": {"path": path}}}


def test_path_escaping_with_dotdot_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    (tmp_path / "outside.csv").write_text("x\n1\n", encoding="utf-8")
    spec_path = make_project(tmp_path / "repo", _one_dataset("../outside.csv"))
    error = _find(_resolve_errors(spec_path), "leaves the repository")
    assert error.message == "path '../outside.csv' leaves the repository"
    assert error.address == "datasets.raw"
    assert error.position == _where(spec_path, "../outside.csv")


def test_absolute_path_is_refused_even_inside_the_repo(tmp_path: Path, make_project: MakeProject) -> None:
    inside = tmp_path / "repo" / "data.csv"
    spec_path = make_project(tmp_path / "repo", _one_dataset(str(inside)), {"data.csv": "x\n1\n"})
    error = _find(_resolve_errors(spec_path), "is absolute")
    assert error.address == "datasets.raw"


def test_symlink_pointing_outside_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    (tmp_path / "secret.csv").write_text("x\n1\n", encoding="utf-8")
    repo = tmp_path / "repo"
    spec_path = make_project(repo, _one_dataset("data/link.csv"))
    (repo / "data").mkdir()
    (repo / "data" / "link.csv").symlink_to(tmp_path / "secret.csv")
    error = _find(_resolve_errors(spec_path), "leaves the repository")
    assert error.address == "datasets.raw"


def test_symlink_staying_inside_is_allowed(tmp_path: Path, make_project: MakeProject) -> None:
    repo = tmp_path / "repo"
    spec_path = make_project(repo, _one_dataset("data/link.csv"), {"store/real.csv": "x\n1\n"})
    (repo / "data").mkdir()
    (repo / "data" / "link.csv").symlink_to(repo / "store" / "real.csv")
    project = load_project(spec_path)
    assert project.dataset_path("raw") == (repo / "store" / "real.csv").resolve()


def test_dotdot_that_stays_inside_is_allowed(tmp_path: Path, make_project: MakeProject) -> None:
    spec_path = make_project(tmp_path, _one_dataset("data/../data/raw.csv"), {"data/raw.csv": "x\n1\n"})
    assert load_project(spec_path).dataset_path("raw") == (tmp_path / "data" / "raw.csv").resolve()


def test_missing_path_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    spec_path = make_project(tmp_path, _one_dataset("data/absent.csv"))
    error = _find(_resolve_errors(spec_path), "does not exist")
    assert error.position == _where(spec_path, "data/absent.csv")


def test_dir_format_on_a_file_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    spec = _one_dataset("data/raw.csv")
    spec["datasets"]["raw"]["format"] = "dir"
    error = _find(_resolve_errors(make_project(tmp_path, spec, {"data/raw.csv": "x\n"})), "format is 'dir'")
    assert error.address == "datasets.raw"


# --- callables ---------------------------------------------------------------------------


def _one_model(train: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1",
        "project": "demo",
        "datasets": {"raw": {"path": "raw.csv"}},
        "models": {"m": {"train": train, "data": {"train": "raw"}}},
    }


def test_callable_module_missing_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    spec_path = make_project(tmp_path, _one_model("nowhere.pipeline:train"), {"raw.csv": "x\n"})
    error = _find(_resolve_errors(spec_path), "module 'nowhere.pipeline' is not a file of the repository")
    assert error.address == "models.m"
    assert error.position == _where(spec_path, "nowhere.pipeline:train")


def test_installed_module_outside_the_repo_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    error = _find(
        _resolve_errors(make_project(tmp_path, _one_model("json:dumps"), {"raw.csv": "x\n"})), "module 'json'"
    )
    assert error.address == "models.m"


@pytest.mark.parametrize(
    ("target", "module_file"),
    [("pkg.mod:train", "pkg/mod.py"), ("pkg:train", "pkg/__init__.py"), ("pipeline:train", "pipeline.py")],
)
def test_callable_is_found_as_module_or_package(
    tmp_path: Path, make_project: MakeProject, target: str, module_file: str
) -> None:
    files = {
        "raw.csv": "x\n",
        "pkg/__init__.py": "def train(ctx): ...\n",
        "pkg/mod.py": "def train(ctx): ...\n",
    }
    project = load_project(make_project(tmp_path, _one_model(target), files))
    assert project.callables == {target: tmp_path / module_file}


def test_module_symlinked_from_outside_is_refused(tmp_path: Path, make_project: MakeProject) -> None:
    (tmp_path / "elsewhere.py").write_text("def train(ctx): ...\n", encoding="utf-8")
    repo = tmp_path / "repo"
    spec_path = make_project(repo, _one_model("linked:train"), {"raw.csv": "x\n"})
    (repo / "linked.py").symlink_to(tmp_path / "elsewhere.py")
    _find(_resolve_errors(spec_path), "module 'linked' is not a file of the repository")


# --- repository root ---------------------------------------------------------------------


def test_root_is_the_git_work_tree_above_the_spec(tmp_path: Path, make_project: MakeProject) -> None:
    spec = _one_model("pipeline:train")
    spec["datasets"]["raw"]["path"] = "../../data/raw.csv"
    spec_path = make_project(tmp_path, spec, {"data/raw.csv": "x\n"}, spec_name="deploy/prod/mlops.yaml")
    project = load_project(spec_path)
    assert project.root == tmp_path.resolve()
    assert project.callables["pipeline:train"] == tmp_path / "pipeline.py"
    assert project.dataset_path("raw") == (tmp_path / "data" / "raw.csv").resolve()


def test_git_file_marks_a_work_tree(tmp_path: Path, make_project: MakeProject) -> None:
    spec_path = make_project(
        tmp_path, _one_model("pipeline:train"), {"raw.csv": "x\n"}, git=False, spec_name="sub/mlops.yaml"
    )
    (tmp_path / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n", encoding="utf-8")
    (tmp_path / "sub" / "raw.csv").write_text("x\n", encoding="utf-8")
    assert load_project(spec_path).root == tmp_path.resolve()


def test_without_git_the_root_is_the_spec_directory(tmp_path: Path, make_project: MakeProject) -> None:
    if any((parent / ".git").exists() for parent in tmp_path.resolve().parents):
        pytest.skip("the temporary directory is inside a git work tree")
    repo = tmp_path / "proj"
    spec = _one_model("pipeline:train")
    spec["datasets"]["raw"]["path"] = "../raw.csv"
    spec_path = make_project(repo, spec, git=False)
    (tmp_path / "raw.csv").write_text("x\n", encoding="utf-8")
    errors = _resolve_errors(spec_path)
    assert [e.message for e in errors] == ["path '../raw.csv' leaves the repository"]


# --- feasibility -------------------------------------------------------------------------


def test_kuberay_gpu_request_larger_than_any_worker_group_is_infeasible(
    tmp_path: Path, make_project: MakeProject
) -> None:
    spec = _one_model("pipeline:train")
    spec["cluster"] = {"provider": "kuberay", "workers": {"gpu": {"gpus": 1}}}
    spec["models"]["m"]["resources"] = {"gpus": 2}
    error = _find(_resolve_errors(make_project(tmp_path, spec, {"raw.csv": "x\n"})), "infeasible")
    assert error.address == "models.m"


# --- views -------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, make_project: MakeProject) -> Project:
    spec = base_spec()
    spec["monitors"]["late"] = {"deployment": "nightly"}
    return load_project(make_project(tmp_path, spec, DATA))


def test_dataset_consumers(project: Project) -> None:
    views = project.views
    assert views["datasets.raw"]["refs"]["consumers"] == ["datasets.features"]
    assert sorted(views["datasets.features"]["refs"]["consumers"]) == ["datasets.enriched", "models.churn"]
    assert sorted(views["datasets.clean"]["refs"]["consumers"]) == ["datasets.enriched", "models.plain"]
    assert views["datasets.scores"]["refs"]["consumers"] == []


def test_dataset_upstream_is_transitive(project: Project) -> None:
    views = project.views
    assert sorted(views["datasets.enriched"]["refs"]["upstream"]) == [
        "datasets.clean",
        "datasets.features",
        "datasets.raw",
    ]
    assert views["datasets.features"]["refs"]["upstream"] == ["datasets.raw"]
    assert views["datasets.raw"]["refs"]["upstream"] == []


def test_derived_datasets_inherit_pii(project: Project) -> None:
    pii = {
        address: view["refs"]["pii"]
        for address, view in project.views.items()
        if address.startswith("datasets.")
    }
    assert pii == {
        "datasets.raw": True,
        "datasets.clean": False,
        "datasets.features": True,
        "datasets.enriched": True,
        "datasets.scores": False,
    }


def test_model_datasets_are_transitive_and_carry_pii(project: Project) -> None:
    churn = project.views["models.churn"]["refs"]
    assert sorted(churn["datasets"]) == [
        "datasets.clean",
        "datasets.enriched",
        "datasets.features",
        "datasets.raw",
    ]
    assert churn["pii"] is True
    plain = project.views["models.plain"]["refs"]
    assert plain["datasets"] == ["datasets.clean"]
    assert plain["pii"] is False


def test_model_gates_and_deployments(project: Project) -> None:
    churn = project.views["models.churn"]["refs"]
    assert churn["gates"] == ["gates.quality"]
    assert sorted(churn["deployments"]) == ["deployments.api", "deployments.nightly"]
    assert project.views["models.plain"]["refs"]["gates"] == []
    assert project.views["gates.quality"]["refs"]["deployments"] == ["deployments.api"]


def test_deployment_refs(project: Project) -> None:
    api = project.views["deployments.api"]
    assert api["refs"]["gates"] == ["gates.quality"]
    assert api["refs"]["monitors"] == ["monitors.drift"]
    assert api["refs"]["model"] == project.views["models.churn"]
    assert api["refs"]["model"]["address"] == "models.churn"
    assert project.views["deployments.nightly"]["refs"]["monitors"] == ["monitors.late"]


def test_monitor_refs_deployment_is_its_view(project: Project) -> None:
    assert project.views["monitors.drift"]["refs"]["deployment"] == project.views["deployments.api"]
    assert project.views["monitors.late"]["refs"]["deployment"]["address"] == "deployments.nightly"


def test_views_carry_defaults_name_and_address(project: Project) -> None:
    api = project.views["deployments.api"]
    assert (api["name"], api["address"], api["mode"], api["replicas"]) == (
        "api",
        "deployments.api",
        "realtime",
        1,
    )
    raw = project.views["datasets.raw"]
    assert raw["schema"] == {"email": "string", "amount": "float"}  # by alias, as written in YAML
    assert raw["pii"] == ["email"]
    assert "from" in project.views["datasets.features"]


def test_project_view_counts_each_section(project: Project) -> None:
    top = project.views["project"]
    assert top["address"] == "project"
    assert top["name"] == "demo"
    assert top["apiVersion"] == "mlops/v1"
    assert top["compliance"] == {"frameworks": [], "risk": "limited"}
    assert top["refs"]["counts"] == {"datasets": 5, "models": 2, "gates": 1, "deployments": 2, "monitors": 2}


def test_cluster_and_storage_views(project: Project) -> None:
    assert project.views["cluster"]["provider"] == "local"
    # the cluster's own `address` field (its Ray address) keeps its meaning in the view when it is set;
    # unset (start one) it is absent like every unset field, and `address` is the resource's, as in every view
    assert project.views["cluster"]["address"] == "cluster"
    assert project.views["cluster"]["name"] == "cluster"
    assert project.views["storage"]["address"] == "storage"
    assert project.views["storage"]["artifacts"] == ".mlops/artifacts"


def test_position_of_a_resource_field(project: Project) -> None:
    position = project.position("models.churn", "train")
    text = project.spec_path.read_text(encoding="utf-8").splitlines()
    assert text[position.line - 1][position.column - 1 :].startswith("pipeline:train")
    key = project.position("models.churn", key=True)
    assert text[key.line - 1][key.column - 1 :].startswith("churn:")
