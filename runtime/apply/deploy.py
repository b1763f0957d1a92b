"""Make a deployment serve a version: a blue/green rollout on Ray Serve, or a batch scoring on Ray.

Apply's deploy step and ``mlops rollback`` both come here; the state records what serves afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from compiler.graph import Graph
from compiler.spec import memory_bytes
from runtime.compute import connect, ray_backend, shipping
from runtime.errors import ApplyError, DeployError
from runtime.state.records import DeploymentState, ModelVersion
from runtime.state.store import StateStore
from runtime.workspace import Workspace


def deploy_version(workspace: Workspace, store: StateStore, name: str, version: int,
                   pin: tuple[int | None, str] | None = None, graph: Graph | None = None,
                   code_package: Callable[[], str] | None = None) -> dict[str, Any]:
    """Make ``version`` the one deployment ``name`` serves, and record it.

    A realtime deployment is rolled out on Ray Serve (blue/green; a failed start leaves the old version
    serving and raises). ``pin`` = (the version rolled back from, why) marks a rollback: it is kept
    until a version newer than the one rolled back from passes the gates. ``code_package`` gives the
    shipped package of the project's code once joined (an apply packs its work tree once for all its steps);
    by default it is packed here.
    """
    project = workspace.project
    deployment = project.spec.deployments[name]
    model_version = store.get_model_version(deployment.model, version)
    if model_version is None:
        raise DeployError.one(f"models.{deployment.model} has no version {version}", address=f"deployments.{name}")
    previous = store.get_deployment(name)
    live_version = previous.live_version if previous else None
    desired = pin[0] if pin is not None and pin[0] is not None else version
    outputs: dict[str, Any] = {"version": version, "mode": deployment.mode}
    if deployment.mode == "realtime":
        from runtime.compute import serving

        route = deployment.route or f"/{name}"
        spec = serve_spec(workspace, name, model_version, graph)
        serving_now = store.get_model_version(deployment.model, live_version) if live_version else None
        before = serve_spec(workspace, name, serving_now, graph) if serving_now is not None else None
        memory = deployment.resources.memory
        resources = serving.ReplicaResources(deployment.resources.cpus, deployment.resources.gpus,
                                             memory_bytes(memory) if memory else None)
        choice = connect.join(project, start_local=True)  # deployments outlive this process
        assert choice is not None
        port = choice.serve_port
        code_uri = (code_package or (lambda: shipping.package_for(project)))()
        spec = spec.shipped(code_uri)  # the replicas may run on nodes that cannot see this repository
        before = before.shipped(code_uri) if before is not None else None
        try:
            serving.deploy(spec, route, deployment.replicas, resources, port, previous=before,
                           http_host=project.spec.cluster.serve_host)
        except serving.RolloutFailed as failed:
            really = None
            with contextlib.suppress(Exception):  # Serve did not answer: nothing is known to serve
                really = serving.live(name)
            serving_version = really.version if really is not None else None
            keeps = f"version {serving_version} keeps serving" if serving_version is not None else "nothing serves"
            store.set_deployment(DeploymentState(name, deployment.model, desired, serving_version,
                                                 f"Degraded: rollout of version {version} failed: {failed}",
                                                 time.time(), previous.pinned_version if previous else None,
                                                 previous.pin_reason if previous else None))
            from runtime.provenance import provenance
            from runtime.state import audit

            origin = provenance(project.root)
            audit.rollout_failed(store, origin.actor, name, deployment.model, version, serving_version, str(failed),
                                 origin.commit)
            raise DeployError.one(f"rollout of version {version} failed, {keeps}: {failed}",
                                 address=f"deployments.{name}") from failed
        outputs.update(route=route, url=f"http://127.0.0.1:{port}{route}")
    else:
        from runtime.compute.batch import BatchSpec, score

        assert deployment.input is not None
        input_uri = dataset_uri(project, store, deployment.input)
        model = project.spec.models[deployment.model]
        connect.join(project)
        code_uri = (code_package or (lambda: shipping.package_for(project)))()
        batch = BatchSpec(deployment=name, version=version, target=model.train, code_hash=model_version.code_hash,
                          repo_root=str(project.root), artifact_root=workspace.artifact_root,
                          model_uri=model_version.artifact_uri, params=dict(model_version.params),
                          input_uri=input_uri).shipped(code_uri)
        outputs.update(ray_backend.call(score, batch, deployment.resources.cpus, deployment.resources.gpus,
                                        code_uri))
    store.set_deployment(DeploymentState(name, deployment.model, desired, version, "Healthy", time.time(),
                                         version if pin is not None else None, pin[1] if pin else None))
    return outputs


def serve_spec(workspace: Workspace, name: str, model_version: ModelVersion, graph: Graph | None = None) -> Any:
    """What a replica of deployment ``name`` needs to serve ``model_version``."""
    from runtime.compute import serving
    from runtime.endpoint import config as endpoint

    project = workspace.project
    deployment = project.spec.deployments[name]
    model = project.spec.models[deployment.model]
    code = model_version.code_hash
    if graph is not None:  # the trainer module's code now (serving code lives beside the trainer)
        code = next((n.code_hash for n in graph.by_address(f"models.{deployment.model}") if n.kind == "trial"), code)
    return serving.ServeSpec(deployment=name, version=model_version.version, target=model.train, code_hash=code,
                             repo_root=str(project.root), artifact_root=workspace.artifact_root,
                             model_uri=model_version.artifact_uri, params=dict(model_version.params),
                             api=endpoint.api_config(project, name, model_version))


def dataset_uri(project: Any, store: StateStore, name: str) -> str:
    """The artifact of a dataset's latest recorded content (its snapshot, or its transform's output)."""
    step = "snapshot" if project.spec.datasets[name].path is not None else "transform"
    result = store.latest_result(f"datasets.{name}/{step}")
    if result is None or "input" not in result.outputs:
        raise ApplyError.one(f"datasets.{name} has not been built yet", address=f"datasets.{name}")
    return str(result.outputs["input"])
