"""Realtime deployments on Ray Serve: one Serve application per deployment, at its route.

A model's serving code is the ``load_predictor(model_path, params)`` function of its trainer's
module: it returns a callable from a list of input rows (dicts) to a list of predictions. A replica
loads the model version's artifact once, answers ``POST {"instances": [{...}, ...]}`` (or one object)
with ``{"predictions": [...], "ids": [...], "version": N}``, and appends a sample of requests to the
inference log for the monitors.

Rollout is blue/green: the new version first starts as a staging application on a private route
and must become healthy (its replicas constructed, the model loaded, health checks passing); only
then is the live application updated to it (Serve replaces its
replicas once the new ones are healthy). A version that fails to start leaves the old one serving.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Literal

Health = Literal["Healthy", "Progressing", "Degraded", "Missing"]
STAGING_PREFIX = "/_mlops/staging"
APP_SUFFIX = "-v"


@dataclass(frozen=True)
class ServeSpec:
    """Everything a replica needs, picklable."""

    deployment: str
    version: int
    target: str
    """The trainer ``module:function``; ``load_predictor`` is looked up in that module."""
    code_hash: str | None
    repo_root: str
    artifact_root: str
    model_uri: str
    params: dict[str, Any]
    sample_rate: float = 1.0


@dataclass(frozen=True)
class LiveDeployment:
    name: str
    version: int | None
    health: Health
    status: str
    replicas: int


class RolloutFailed(Exception):
    """The new version did not start; the old one keeps serving."""


def _server_class() -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class ModelServer:
        def __init__(self, spec: ServeSpec) -> None:
            import random
            import tempfile
            import uuid
            from pathlib import Path

            from runtime.artifacts import ArtifactStore
            from runtime.inference_log import InferenceWriter, log_dir
            from runtime.worker import _import

            self.spec = spec
            self._random = random.Random()
            self._uuid = uuid.uuid4
            store = ArtifactStore(spec.artifact_root)
            local = store.local_path(spec.model_uri)
            if local is None:
                local = store.get_file(spec.model_uri, Path(tempfile.mkdtemp()) / "model.pt")
            module_loader = _import(spec.target.split(":")[0] + ":load_predictor", spec.code_hash, spec.repo_root)
            self.predictor = module_loader(Path(local), dict(spec.params))
            replica = f"v{spec.version}-{uuid.uuid4().hex[:8]}"
            self.writer = InferenceWriter(log_dir(spec.artifact_root, spec.deployment), replica)

        async def __call__(self, request: Request) -> dict[str, Any]:
            from runtime.inference_log import InferenceRecord

            body = await request.json()
            rows = body["instances"] if isinstance(body, dict) and "instances" in body else \
                body if isinstance(body, list) else [body]
            started = time.perf_counter()
            predictions = [float(p) if isinstance(p, int | float) else p for p in self.predictor(rows)]
            latency = (time.perf_counter() - started) * 1000
            ids = [self._uuid().hex for _ in rows]
            now = time.time()
            for record_id, row, prediction in zip(ids, rows, predictions, strict=True):
                if self._random.random() < self.spec.sample_rate:
                    self.writer.write(InferenceRecord(record_id, now, self.spec.version, row, prediction,
                                                      latency / max(1, len(rows))))
            return {"predictions": predictions, "ids": ids, "version": self.spec.version}

        def check_health(self) -> None:
            if self.predictor is None:  # pragma: no cover - construction would have failed
                raise RuntimeError("no model loaded")

    return ModelServer


def start(http_port: int) -> None:
    """Start Serve's controller and HTTP proxy on the connected cluster (idempotent)."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": http_port})


def _application(spec: ServeSpec, replicas: int, cpus: float, gpus: float) -> Any:
    server = _server_class()
    options = {"num_cpus": cpus, "num_gpus": gpus}
    return server.options(name=f"{spec.deployment}{APP_SUFFIX}{spec.version}", num_replicas=max(1, replicas),
                          ray_actor_options=options, health_check_period_s=1,
                          graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=2).bind(spec)


def deploy(spec: ServeSpec, route: str, replicas: int, cpus: float, gpus: float, http_port: int,
           timeout: float = 120.0) -> LiveDeployment:
    """Blue/green: prove the new version on a staging route, then move the live route to it."""
    from ray import serve

    start(http_port)
    if live(spec.deployment) is None:  # nothing serving yet: nothing to protect, start it in place
        try:
            serve.run(_application(spec, replicas, cpus, gpus), name=spec.deployment, route_prefix=route,
                      blocking=False)
            _wait_running(spec.deployment, timeout)
        except Exception as exc:  # noqa: BLE001
            _delete(spec.deployment)
            raise RolloutFailed(f"version {spec.version} did not start: {str(exc).splitlines()[0]}") from exc
        return live(spec.deployment) or LiveDeployment(spec.deployment, spec.version, "Progressing", "DEPLOYING", 0)
    staging_name = f"{spec.deployment}--staging"
    staging_route = f"{STAGING_PREFIX}/{spec.deployment}"
    try:
        serve.run(_application(spec, 1, cpus, gpus), name=staging_name, route_prefix=staging_route,
                  blocking=False)
    except Exception as exc:  # noqa: BLE001 - any failure to start is a failed rollout
        _delete(staging_name)
        raise RolloutFailed(f"version {spec.version} did not start: {str(exc).splitlines()[0]}") from exc
    try:
        _wait_running(staging_name, timeout)
    except RolloutFailed:
        _delete(staging_name)
        raise
    serve.run(_application(spec, replicas, cpus, gpus), name=spec.deployment, route_prefix=route, blocking=False)
    _wait_running(spec.deployment, timeout)
    _delete(staging_name, wait=False)
    return live(spec.deployment) or LiveDeployment(spec.deployment, spec.version, "Progressing", "DEPLOYING", 0)


def _wait_running(name: str, timeout: float) -> None:
    from ray import serve

    deadline = time.time() + timeout
    while time.time() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and str(app.status) in ("RUNNING", "ApplicationStatus.RUNNING"):
            return
        if app is not None and "FAIL" in str(app.status):
            raise RolloutFailed(f"{name}: {app.message.splitlines()[0] if app.message else app.status}")
        time.sleep(0.25)
    raise RolloutFailed(f"{name} did not become healthy within {timeout:.0f}s")


def _delete(name: str, wait: bool = True) -> None:
    from ray import serve

    with contextlib.suppress(Exception):  # already gone
        serve.delete(name, _blocking=wait)


def undeploy(name: str) -> None:
    """Remove a deployment's application."""
    _delete(name)


def live(name: str) -> LiveDeployment | None:
    """What Serve itself says about a deployment (``None`` when Serve has no such application)."""
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return None
    status = str(app.status).rsplit(".", 1)[-1]
    version = None
    replicas = 0
    for deployment_name, deployment in app.deployments.items():
        if APP_SUFFIX in deployment_name:
            try:
                version = int(deployment_name.rsplit(APP_SUFFIX, 1)[1])
            except ValueError:
                version = None
        replicas += sum(deployment.replica_states.values()) if deployment.replica_states else 0
    health: Health = {"RUNNING": "Healthy", "DEPLOYING": "Progressing", "NOT_STARTED": "Progressing"}.get(
        status, "Degraded")  # type: ignore[assignment]
    return LiveDeployment(name, version, health, status, replicas)


def applications() -> list[str]:
    from ray import serve

    return [name for name in serve.status().applications if not name.endswith("--staging")]
