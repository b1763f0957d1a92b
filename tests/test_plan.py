"""The planner: actions and reasons from the desired graph against recorded node results (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compiler import build_graph, load_project
from compiler.graph import Graph
from runtime.plan.actions import GateView, make_plan
from runtime.state.records import GateDecision, NodeResult

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "datasets": {
        "raw": {"path": "data/raw.csv"},
        "features": {"from": ["raw"], "transform": "pipeline:build_features"},
    },
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": 0.01}}},
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                          "approvals": {"required": 1, "from": ["team:risk"]}}},
    "deployments": {"api": {"model": "churn", "gates": ["quality"], "replicas": 1}},
}


def _graph(root: Path, make_project: Any, spec: dict[str, Any] | None = None, data: str = "a,b\n1,2\n",
           pipeline_extra: str = "") -> Graph:
    from conftest import PIPELINE_SOURCE

    path = make_project(root, spec or SPEC, files={"data/raw.csv": data}, pipeline=PIPELINE_SOURCE + pipeline_extra)
    return build_graph(load_project(path))


def _recorded(graph: Graph) -> dict[str, NodeResult]:
    """Everything recorded as applied at the graph's current fingerprints (model version 1)."""
    out = {}
    for node in graph.nodes():
        upstream = {p: graph.node(p).fingerprint for p in graph.dag.predecessors(node.id)}
        outputs = {"version": 1} if node.kind == "trial" else {}
        out[node.id] = NodeResult(node.id, node.address, node.kind, node.fingerprint, node.config, node.code_hash,
                                  node.data_hash, upstream, "succeeded", outputs)
    return out


def _actions(plan: Any) -> dict[str, str]:
    return {c.address: c.action for c in plan.resource_changes}


def _reasons(plan: Any, address: str) -> list[str]:
    return next(c.reasons for c in plan.resource_changes if c.address == address)


def test_nothing_recorded_creates_everything(tmp_path: Path, make_project: Any) -> None:
    plan = make_plan(_graph(tmp_path, make_project), {}, {})
    assert set(_actions(plan).values()) == {"create"}
    assert plan.summary["create"] == 5 and plan.has_changes


def test_everything_recorded_is_a_no_op(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    plan = make_plan(graph, _recorded(graph), {})
    assert set(_actions(plan).values()) == {"no-op"} and not plan.has_changes
    assert plan.to_json()["summary"]["no-op"] == 5


def test_param_change_replaces_the_model_and_what_follows_with_the_reason(tmp_path: Path, make_project: Any) -> None:
    before = _graph(tmp_path / "a", make_project)
    spec = {**SPEC, "models": {"churn": {**SPEC["models"]["churn"], "params": {"lr": 0.02}}}}
    after = _graph(tmp_path / "a", make_project, spec)
    plan = make_plan(after, _recorded(before), {})
    actions = _actions(plan)
    assert actions["datasets.raw"] == actions["datasets.features"] == "no-op"
    assert actions["models.churn"] == "replace"
    assert "params.lr: 0.01 -> 0.02" in _reasons(plan, "models.churn")
    assert actions["gates.quality"] == "replace" and "upstream changed: models.churn" in _reasons(plan, "gates.quality")
    assert actions["deployments.api"] == "replace"


def test_data_change_names_the_dataset(tmp_path: Path, make_project: Any) -> None:
    before = _graph(tmp_path, make_project)
    after = _graph(tmp_path, make_project, data="a,b\n1,3\n")
    plan = make_plan(after, _recorded(before), {})
    assert _actions(plan)["datasets.raw"] == "replace"
    assert "data changed: datasets.raw" in _reasons(plan, "datasets.raw")
    assert "data changed: datasets.raw" in _reasons(plan, "datasets.features")
    assert "data changed: datasets.features" in _reasons(plan, "models.churn")


def test_code_change_names_the_file(tmp_path: Path, make_project: Any) -> None:
    before = _graph(tmp_path, make_project)
    after = _graph(tmp_path, make_project, pipeline_extra="\n# tuned\n")
    plan = make_plan(after, _recorded(before), {})
    assert "code changed: pipeline.py" in _reasons(plan, "datasets.features")
    assert "code changed: pipeline.py" in _reasons(plan, "models.churn")


def test_replicas_change_is_an_in_place_update(tmp_path: Path, make_project: Any) -> None:
    before = _graph(tmp_path, make_project)
    spec = {**SPEC, "deployments": {"api": {**SPEC["deployments"]["api"], "replicas": 3}}}
    plan = make_plan(_graph(tmp_path, make_project, spec), _recorded(before), {})
    assert _actions(plan)["deployments.api"] == "update"
    assert _reasons(plan, "deployments.api") == ["replicas: 1 -> 3"]
    assert _actions(plan)["models.churn"] == "no-op"


def test_removed_resource_is_deleted(tmp_path: Path, make_project: Any) -> None:
    before = _graph(tmp_path, make_project)
    spec = {k: v for k, v in SPEC.items() if k not in ("deployments",)}
    plan = make_plan(_graph(tmp_path, make_project, spec), _recorded(before), {})
    assert _actions(plan)["deployments.api"] == "delete"
    assert _reasons(plan, "deployments.api") == ["removed from the spec"]


def _decision(status: str) -> GateDecision:
    checks = [{"metric": "auc", "passed": status != "failed", "reason": "auc 0.7 >= 0.8 is false"}]
    return GateDecision("quality", "churn", 1, status, checks)  # type: ignore[arg-type]


def test_gate_awaiting_approval_blocks_it_and_its_deployment(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    recorded = _recorded(graph)
    del recorded["deployments.api/deploy"]
    plan = make_plan(graph, recorded, {"gates.quality": GateView(_decision("awaiting_approval"), 0, 1)})
    assert _actions(plan)["gates.quality"] == "blocked"
    assert _reasons(plan, "gates.quality") == ["awaiting approval: gates.quality (0 of 1 approvals)"]
    assert _actions(plan)["deployments.api"] == "blocked"
    assert _reasons(plan, "deployments.api") == ["blocked by gates.quality"]


def test_gate_with_enough_approvals_updates(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    plan = make_plan(graph, _recorded(graph), {"gates.quality": GateView(_decision("awaiting_approval"), 1, 1)})
    assert _actions(plan)["gates.quality"] == "update"


def test_failed_gate_is_blocked_with_its_reason(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    plan = make_plan(graph, _recorded(graph), {"gates.quality": GateView(_decision("failed"), 0, 1)})
    assert _reasons(plan, "gates.quality") == ["gate failed: gates.quality: auc 0.7 >= 0.8 is false"]


def test_target_limits_the_plan_to_the_resource_and_its_upstream(tmp_path: Path, make_project: Any) -> None:
    plan = make_plan(_graph(tmp_path, make_project), {}, {}, targets=["datasets.features"])
    assert set(_actions(plan)) == {"datasets.raw", "datasets.features"}


def test_state_digest_changes_with_the_state(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    empty, full = make_plan(graph, {}, {}), make_plan(graph, _recorded(graph), {})
    assert empty.spec_digest == full.spec_digest and empty.state_digest != full.state_digest


@pytest.mark.parametrize("actions,expected", [(["create"], "create"), (["no-op", "create"], "replace"),
                                              (["no-op", "delete"], "update"), (["blocked", "replace"], "blocked")])
def test_resource_action_from_node_actions(actions: list[Any], expected: str) -> None:
    from compiler.change_reasons import strongest

    assert strongest(actions) == expected


def test_a_forced_node_reruns_with_its_reason_and_so_does_its_downstream(tmp_path: Path, make_project: Any) -> None:
    graph = _graph(tmp_path, make_project)
    plan = make_plan(graph, _recorded(graph), {}, forced={"models.churn/train": "monitor breach: monitors.drift"})
    actions = _actions(plan)
    assert actions["datasets.features"] == "no-op"
    assert actions["models.churn"] == "replace" and _reasons(plan, "models.churn") == ["monitor breach: monitors.drift"]
    assert actions["gates.quality"] == "replace"
    assert _reasons(plan, "gates.quality") == ["upstream changed: models.churn"]
    assert actions["deployments.api"] == "replace"


def _node_reasons(plan: Any, node_id: str) -> list[str]:
    return next(list(c.reasons) for c in plan.node_changes if c.node_id == node_id)


def test_a_resource_never_names_itself_as_its_upstream_change(tmp_path: Path, make_project: Any) -> None:
    evaluated = {**SPEC, "models": {"churn": {**SPEC["models"]["churn"], "evaluate": "pipeline:evaluate"}}}
    before = _graph(tmp_path, make_project, evaluated)
    tuned = {**evaluated, "models": {"churn": {**evaluated["models"]["churn"], "params": {"lr": 0.02}}}}
    plan = make_plan(_graph(tmp_path, make_project, tuned), _recorded(before), {})
    # the evaluation runs again because its trial does: the trial's reason, not "upstream changed: models.churn"
    assert _node_reasons(plan, "models.churn/evaluate") == ["params.lr: 0.01 -> 0.02"]
    assert _reasons(plan, "models.churn") == ["params.lr: 0.01 -> 0.02"]
    assert _reasons(plan, "gates.quality") == ["upstream changed: models.churn"]  # another resource's change

    forced = make_plan(before, _recorded(before), {}, forced={"models.churn/train": "monitor breach: monitors.drift"})
    assert _node_reasons(forced, "models.churn/evaluate") == ["monitor breach: monitors.drift"]
    assert _reasons(forced, "models.churn") == ["monitor breach: monitors.drift"]

    recorded = _recorded(before)  # the trial ran at its current fingerprint, the evaluation against an older one
    recorded["models.churn/evaluate"].upstream["models.churn/train"] = "older"
    recorded["models.churn/evaluate"].fingerprint = "older"
    stale = make_plan(before, recorded, {})
    assert _reasons(stale, "models.churn") == ["not yet run against the current models.churn/train"]

    swept = {**evaluated, "models": {"churn": {**{k: v for k, v in evaluated["models"]["churn"].items()
                                                  if k != "params"}, "sweep": {"lr": [0.1, 0.2]},
                                               "objective": {"metric": "auc", "goal": "maximize"}}}}
    before_sweep = _graph(tmp_path, make_project, swept)
    wider = {**swept, "models": {"churn": {**swept["models"]["churn"], "sweep": {"lr": [0.1, 0.3]}}}}
    plan = make_plan(_graph(tmp_path, make_project, wider), _recorded(before_sweep), {})
    assert _node_reasons(plan, "models.churn/select") == ["not yet run: models.churn/train[lr=0.3]"]
    for address in ("models.churn", "gates.quality", "deployments.api"):
        assert f"upstream changed: {address}" not in _reasons(plan, address)


def test_a_failed_gate_is_blocked_by_its_failed_checks_not_by_the_approvals_it_records(
        tmp_path: Path, make_project: Any) -> None:
    from runtime.apply.gates import decide

    project = load_project(make_project(tmp_path, SPEC, files={"data/raw.csv": "a,b\n1,2\n"}))
    decision = decide("quality", project.spec.gates["quality"], 1, {"auc": 0.7}, None, [])
    assert decision.status == "failed"
    assert decision.checks[-1] == {"approvals": {"required": 1, "from": ["team:risk"]}, "approved": [],
                                   "passed": False, "reason": "approvals: 0 of 1 required"}  # the rule of its day
    graph = build_graph(project)
    plan = make_plan(graph, _recorded(graph), {"gates.quality": GateView(decision, 0, 1)})
    assert _reasons(plan, "gates.quality") == ["gate failed: gates.quality: auc 0.7 >= 0.8 is false"]
