"""The dependency graph: node ids and kinds, edges, JSON shape, and fingerprint stability."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import build_graph, load_project
from compiler.graph import Graph

MakeProject = Callable[..., Path]

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "datasets": {
        "raw": {"path": "data/raw.csv", "schema": {"x": "float", "y": "int"}},
        "side": {"path": "data/side.csv"},
        "features": {"from": ["raw"], "transform": "pipeline:build_features", "params": {"window": 3}},
    },
    "models": {
        "m": {
            "train": "training:train",
            "evaluate": "scoring:evaluate",
            "data": {"train": "features", "eval": "features"},
            "params": {"epochs": 2},
            "sweep": {"hidden": [16, 32], "lr": [0.01, 0.1]},
            "objective": {"metric": "auc", "goal": "maximize"},
            "description": "A model",
        },
    },
    "gates": {"g": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.5}]}},
    "deployments": {"d": {"model": "m", "gates": ["g"], "mode": "realtime", "replicas": 1}},
    "monitors": {
        "x": {"deployment": "d", "reference": "features", "checks": [{"type": "latency", "p95_ms": 100}]}
    },
}

REFORMATTED = """\
# The same spec: other key order, flow and block mixed, quoting, comments.
monitors:
  x: {checks: [{p95_ms: 100, type: latency}], reference: "features", deployment: d}
deployments:
  d:
    replicas: 1      # one replica
    mode: 'realtime'
    gates:
      - g
    model: m
gates:
  g:
    checks:
      - value: 0.50
        op: '>='
        metric: "auc"
    model: m
models:
  m:
    description: >-
      A model
    objective: {goal: maximize, metric: auc}
    sweep:
      lr: [0.01, 0.1]
      hidden:
        - 16
        - 32
    params: {epochs: 2}
    data: {eval: features, train: features}
    evaluate: "scoring:evaluate"
    train: training:train
datasets:
  features:
    params: {window: 3}
    transform: pipeline:build_features
    from: [raw]
  side: {path: data/side.csv}
  raw:
    schema: {y: int, x: float}
    path: "data/raw.csv"
project: "demo"
apiVersion: 'mlops/v1'
"""

FILES: dict[str, str] = {
    "data/raw.csv": "x,y\n1.0,0\n2.0,1\n",
    "data/side.csv": "z\n7\n",
    "training.py": "def train(ctx):\n    return None\n",
    "scoring.py": "def evaluate(ctx):\n    return {'auc': 0.9}\n",
}

TRIALS = {
    "models.m/train[hidden=16,lr=0.01]",
    "models.m/train[hidden=16,lr=0.1]",
    "models.m/train[hidden=32,lr=0.01]",
    "models.m/train[hidden=32,lr=0.1]",
}
RAW, SIDE, FEATURES = "datasets.raw/snapshot", "datasets.side/snapshot", "datasets.features/transform"
SELECT, EVALUATE, GATE = "models.m/select", "models.m/evaluate", "gates.g/check"
DEPLOY, WATCH = "deployments.d/deploy", "monitors.x/watch"
AFTER_MODEL = {GATE, DEPLOY, WATCH}


def _graph(
    make_project: MakeProject,
    root: Path,
    spec: dict[str, Any] | str = SPEC,
    files: dict[str, str] | None = None,
) -> Graph:
    return build_graph(load_project(make_project(root, spec, {**FILES, **(files or {})})))


def _fingerprints(graph: Graph) -> dict[str, str]:
    return {node.id: node.fingerprint for node in graph.nodes()}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after), "the change should not add or remove nodes"
    return {node_id for node_id in before if before[node_id] != after[node_id]}


def _edit(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    node: Any = spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return spec


def _reordered(value: Any) -> Any:
    """Every mapping with its keys in reverse order (lists keep theirs: their order means something)."""
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(item) for item in value]
    return value


@pytest.fixture
def graph(tmp_path: Path, make_project: MakeProject) -> Graph:
    return _graph(make_project, tmp_path)


@pytest.fixture
def baseline(graph: Graph) -> dict[str, str]:
    return _fingerprints(graph)


# --- shape -------------------------------------------------------------------------------


def test_node_ids_and_kinds(graph: Graph) -> None:
    kinds = {node.id: node.kind for node in graph.nodes()}
    assert kinds == {
        RAW: "snapshot",
        SIDE: "snapshot",
        FEATURES: "transform",
        **dict.fromkeys(TRIALS, "trial"),
        SELECT: "select",
        EVALUATE: "evaluate",
        GATE: "gate",
        DEPLOY: "deploy",
        WATCH: "monitor",
    }


def test_nodes_belong_to_their_resource(graph: Graph) -> None:
    assert {node.id for node in graph.by_address("models.m")} == TRIALS | {SELECT, EVALUATE}
    assert [node.id for node in graph.by_address("datasets.features")] == [FEATURES]
    assert [node.id for node in graph.by_address("monitors.x")] == [WATCH]


def test_edges_follow_dependencies(graph: Graph) -> None:
    expected = {
        (RAW, FEATURES),
        *((FEATURES, trial) for trial in TRIALS),
        *((trial, SELECT) for trial in TRIALS),
        (SELECT, EVALUATE),
        (FEATURES, EVALUATE),
        (EVALUATE, GATE),
        (EVALUATE, DEPLOY),
        (GATE, DEPLOY),
        (DEPLOY, WATCH),
        (FEATURES, WATCH),
    }
    assert set(graph.dag.edges) == expected


def test_trial_params_merge_sweep_point_over_params(graph: Graph) -> None:
    trial = graph.node("models.m/train[hidden=32,lr=0.01]")
    assert trial.config["params"] == {"epochs": 2, "hidden": 32, "lr": 0.01}


def test_model_without_sweep_or_evaluate_is_one_train_node(tmp_path: Path, make_project: MakeProject) -> None:
    spec = copy.deepcopy(SPEC)
    model = spec["models"]["m"]
    for key in ("sweep", "objective", "evaluate"):
        del model[key]
    graph = _graph(make_project, tmp_path, spec)
    assert [node.id for node in graph.by_address("models.m")] == ["models.m/train"]
    assert set(graph.dag.predecessors(GATE)) == {"models.m/train"}


def test_batch_deployment_depends_on_its_input(tmp_path: Path, make_project: MakeProject) -> None:
    spec = copy.deepcopy(SPEC)
    spec["deployments"]["nightly"] = {"model": "m", "mode": "batch", "input": "side"}
    graph = _graph(make_project, tmp_path, spec)
    assert set(graph.dag.predecessors("deployments.nightly/deploy")) == {EVALUATE, SIDE}


def test_to_json_shape(graph: Graph) -> None:
    document = json.loads(json.dumps(graph.to_json()))
    assert set(document) == {"nodes", "edges"}
    ids = [node["id"] for node in document["nodes"]]
    assert set(ids) == {RAW, SIDE, FEATURES, *TRIALS, SELECT, EVALUATE, GATE, DEPLOY, WATCH}
    assert len(ids) == len(set(ids))
    for node in document["nodes"]:
        assert {"id", "kind", "address", "fingerprint"} <= set(node)
        assert len(node["fingerprint"]) == 64 and int(node["fingerprint"], 16) >= 0
        assert node["id"].startswith(node["address"] + "/")
    assert all(isinstance(edge, list) and len(edge) == 2 for edge in document["edges"])
    assert {tuple(edge) for edge in document["edges"]} == set(graph.dag.edges)
    assert document["edges"] == sorted(document["edges"])
    order = {node_id: index for index, node_id in enumerate(ids)}
    assert all(order[a] < order[b] for a, b in document["edges"]), "nodes are listed in topological order"


def test_to_json_records_code_and_data_hashes(graph: Graph, tmp_path: Path) -> None:
    nodes = {node["id"]: node for node in graph.to_json()["nodes"]}
    training = hashlib.sha256((tmp_path / "training.py").read_bytes()).hexdigest()
    raw = hashlib.sha256((tmp_path / "data" / "raw.csv").read_bytes()).hexdigest()
    assert nodes["models.m/train[hidden=16,lr=0.01]"]["code"] == {"path": "training.py", "hash": training}
    assert nodes[EVALUATE]["code"]["path"] == "scoring.py"
    assert nodes[RAW]["data_hash"] == raw
    assert "code" not in nodes[GATE] and "data_hash" not in nodes[GATE]


def test_fingerprints_are_distinct(baseline: dict[str, str]) -> None:
    assert len(set(baseline.values())) == len(baseline)


# --- fingerprint stability ---------------------------------------------------------------


def test_same_project_elsewhere_gives_the_same_fingerprints(
    tmp_path: Path, make_project: MakeProject, baseline: dict[str, str]
) -> None:
    moved = _graph(make_project, tmp_path / "checkout" / "elsewhere")
    assert _fingerprints(moved) == baseline


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(lambda spec: yaml.safe_dump(_reordered(spec), sort_keys=False), id="keys-reversed"),
        pytest.param(
            lambda spec: yaml.safe_dump(spec, default_flow_style=True, sort_keys=True), id="all-flow"
        ),
        pytest.param(lambda spec: REFORMATTED, id="hand-reformatted"),
    ],
)
def test_reformatting_the_yaml_changes_no_fingerprint(
    tmp_path: Path,
    make_project: MakeProject,
    baseline: dict[str, str],
    render: Callable[[dict[str, Any]], str],
) -> None:
    text = render(copy.deepcopy(SPEC))
    assert yaml.safe_load(text) == SPEC  # the same data, only written differently
    assert _fingerprints(_graph(make_project, tmp_path / "variant", text)) == baseline


def test_spelling_out_defaults_changes_no_fingerprint(
    tmp_path: Path, make_project: MakeProject, baseline: dict[str, str]
) -> None:
    spec = copy.deepcopy(SPEC)
    spec["models"]["m"].update(seed=0, retries=0, timeout="1h")
    spec["deployments"]["d"].update(route="/d", version=None, input=None)
    spec["monitors"]["x"].update(schedule="1h", on_breach=["alert"])
    spec["compliance"] = {"risk": "limited", "frameworks": []}
    assert _fingerprints(_graph(make_project, tmp_path / "explicit", spec)) == baseline


# --- what a change touches ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "roots"),
    [
        (("datasets", "features", "params", "window"), 4, {FEATURES}),
        (("datasets", "raw", "schema", "y"), "float", {RAW}),
        (("models", "m", "params", "epochs"), 3, TRIALS),
        (("models", "m", "seed"), 7, TRIALS),
        (("models", "m", "objective", "goal"), "minimize", {SELECT}),
        (("gates", "g", "checks", 0, "value"), 0.6, {GATE}),
        (("monitors", "x", "schedule"), "5m", {WATCH}),
    ],
)
def test_changing_one_setting_changes_that_node_and_its_downstream_only(
    tmp_path: Path,
    make_project: MakeProject,
    graph: Graph,
    baseline: dict[str, str],
    path: tuple[str | int, ...],
    value: Any,
    roots: set[str],
) -> None:
    after = _fingerprints(_graph(make_project, tmp_path / "after", _edit(path, value)))
    downstream = set().union(*(graph.downstream(root) for root in roots))
    assert _changed(baseline, after) == roots | downstream


def test_changing_a_model_param_changes_its_trials_and_everything_after(
    tmp_path: Path, make_project: MakeProject, baseline: dict[str, str]
) -> None:
    after = _fingerprints(
        _graph(make_project, tmp_path / "after", _edit(("models", "m", "params", "epochs"), 3))
    )
    assert _changed(baseline, after) == TRIALS | {SELECT, EVALUATE} | AFTER_MODEL


def test_changing_replicas_changes_only_the_deployment_and_its_monitor(
    tmp_path: Path, make_project: MakeProject, baseline: dict[str, str]
) -> None:
    after = _fingerprints(
        _graph(make_project, tmp_path / "after", _edit(("deployments", "d", "replicas"), 3))
    )
    assert _changed(baseline, after) == {DEPLOY, WATCH}


def test_changing_serving_resources_changes_the_deployment(
    tmp_path: Path, make_project: MakeProject, baseline: dict[str, str]
) -> None:
    after = _fingerprints(
        _graph(make_project, tmp_path / "after", _edit(("deployments", "d", "resources"), {"cpus": 4}))
    )
    assert _changed(baseline, after) == {DEPLOY, WATCH}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("models", "m", "description"), "Another description"),
        (("models", "m", "intended_use"), "Demos only"),
        (("datasets", "raw", "description"), "Raw rows"),
        (("models", "m", "retries"), 3),
    ],
)
def test_documentation_and_retry_fields_change_nothing(
    tmp_path: Path,
    make_project: MakeProject,
    baseline: dict[str, str],
    path: tuple[str | int, ...],
    value: Any,
) -> None:
    after = _fingerprints(_graph(make_project, tmp_path / "after", _edit(path, value)))
    assert _changed(baseline, after) == set()


@pytest.mark.parametrize(
    ("module", "changed"),
    [
        ("training.py", TRIALS | {SELECT, EVALUATE} | AFTER_MODEL),
        ("scoring.py", {EVALUATE} | AFTER_MODEL),
        ("pipeline.py", {FEATURES, *TRIALS, SELECT, EVALUATE} | AFTER_MODEL),
    ],
)
def test_changing_a_callables_module_changes_its_nodes_and_downstream_only(
    tmp_path: Path, make_project: MakeProject, module: str, changed: set[str]
) -> None:
    before = _fingerprints(_graph(make_project, tmp_path))
    with (tmp_path / module).open("a", encoding="utf-8") as handle:
        handle.write("\n\ndef helper():\n    return 1\n")
    after = _fingerprints(build_graph(load_project(tmp_path / "mlops.yaml")))
    assert _changed(before, after) == changed


@pytest.mark.parametrize(
    ("data_file", "changed"),
    [
        ("data/raw.csv", {RAW, FEATURES, *TRIALS, SELECT, EVALUATE} | AFTER_MODEL),
        ("data/side.csv", {SIDE}),
    ],
)
def test_changing_source_data_changes_its_snapshot_and_downstream_only(
    tmp_path: Path, make_project: MakeProject, data_file: str, changed: set[str]
) -> None:
    before = _fingerprints(_graph(make_project, tmp_path))
    target = tmp_path / data_file
    target.write_bytes(target.read_bytes() + b"9.0,1\n")
    after = _fingerprints(build_graph(load_project(tmp_path / "mlops.yaml")))
    assert _changed(before, after) == changed


def test_directory_dataset_hash_covers_file_names_and_bytes(
    tmp_path: Path, make_project: MakeProject
) -> None:
    spec = copy.deepcopy(SPEC)
    spec["datasets"]["side"] = {"path": "data/shards", "format": "dir"}
    files = {"data/shards/a.csv": "z\n1\n", "data/shards/b.csv": "z\n2\n"}
    before = _fingerprints(_graph(make_project, tmp_path, spec, files))
    (tmp_path / "data/shards/b.csv").rename(tmp_path / "data/shards/c.csv")
    renamed = _fingerprints(build_graph(load_project(tmp_path / "mlops.yaml")))
    assert _changed(before, renamed) == {SIDE}
    (tmp_path / "data/shards/c.csv").write_text("z\n3\n", encoding="utf-8")
    edited = _fingerprints(build_graph(load_project(tmp_path / "mlops.yaml")))
    assert _changed(renamed, edited) == {SIDE}
