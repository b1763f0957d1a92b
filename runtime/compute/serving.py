"""Realtime deployments on Ray Serve: one Serve application per deployment, at its route.

A model's serving code is the ``load_predictor(model_path, params)`` function of its trainer's
module: it returns a callable from a list of input rows (dicts) to a list of predictions. A replica
loads the model version's artifact once, answers ``POST {"instances": [{...}, ...]}`` with
``{"predictions": [...], "ids": [...], "version": N}`` and everything else with the errors of
:mod:`runtime.endpoint.contract`, and appends a sample of requests to the inference log for the monitors.

Rollout is blue/green: the new version first starts as a staging application of one replica on a
private route and must become healthy (constructed, the model loaded, health checks passing); only
then is the live application updated to it. The live replicas are constructed once (with what no
version changes: :meth:`ServeSpec.home`) and handed each version in their ``user_config``, and the
deployment's Serve version is :func:`code_version`: so a switch, forward or back, is a ``user_config``
change that Serve applies to the running replicas in place (:meth:`reconfigure` loads the new model
beside the old one and swaps them: no process starts, no request waits for one, none fails). When the
replicas must restart (their resources or this code changed), ``max_surge_percent`` starts a
replacement before an old replica stops.

Every call into Serve here has a deadline: Serve's own waits are turned off and this module polls
the application's status until :data:`ROLLOUT_TIMEOUT_S`. A version that is not healthy in time is
undone (its staging application removed, the live application put back to the previous version) and
the error carries the replica's own cause (the last exception line of Serve's message, or why its
replicas could not be scheduled).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import numbers
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from runtime.endpoint.contract import ApiConfig, Problem

Health = Literal["Healthy", "Progressing", "Degraded", "Missing"]
STAGING_PREFIX = "/_mlops/staging"
STAGING_SUFFIX = "--staging"
APP_SUFFIX = "-v"
"""Deployments made before the version moved into ``user_config`` were named ``<deployment>-v<N>``."""
ROLLOUT_TIMEOUT_S = 120.0
"""How long a version may take to become healthy (staging, then live) before its rollout is undone."""
DELETE_TIMEOUT_S = 30.0
CONTROLLER_TIMEOUT_S = 15.0
"""How long one question to Serve's controller may take."""
_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*)$")


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
    api: ApiConfig
    """The HTTP contract: input signature, limits, accepted tokens (:mod:`runtime.endpoint.contract`)."""
    sample_rate: float = 1.0

    def home(self) -> dict[str, str]:
        """What a replica is constructed with: the parts no version changes."""
        return {"deployment": self.deployment, "repo_root": self.repo_root, "artifact_root": self.artifact_root}

    def user_config(self) -> dict[str, Any]:
        """The version-specific rest, as the JSON ``user_config`` Serve hands to :meth:`reconfigure` (a change of
        it alone reloads the model in the running replicas, with no restart)."""
        return {"version": self.version, "model_uri": self.model_uri, "spec": dataclasses.asdict(self)}

    @classmethod
    def from_user_config(cls, config: dict[str, Any]) -> ServeSpec:
        fields = dict(config["spec"])
        api = dict(fields.pop("api"))
        api["token_hashes"] = tuple(api.get("token_hashes") or ())
        api["pii_columns"] = tuple(api.get("pii_columns") or ())
        return cls(**fields, api=ApiConfig(**api))


@dataclass(frozen=True)
class ReplicaResources:
    """What each replica of a deployment reserves on the cluster."""

    cpus: float
    gpus: float = 0.0
    memory_bytes: int | None = None

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options


@dataclass(frozen=True)
class LiveDeployment:
    name: str
    version: int | None
    health: Health
    status: str
    replicas: int


class RolloutFailed(Exception):
    """The new version did not start; the old one keeps serving."""


def bind_replica_grpc_to_node_address() -> None:
    """Make this replica's inter-deployment gRPC server listen on its node's address, not on every interface.

    Ray Serve 2.60 binds it to ``[::]:0`` with no option (``ray/serve/_private/replica.py``); peers reach a
    replica at its node's address, which is 127.0.0.1 on the embedded cluster. Called in the replica's
    constructor, which Serve runs before it starts that server; a Serve without this hook is left as it is.
    """
    import ray
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "mlops_node_address", False):
        return
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def add_port_on_node_address(server: Any, address: str) -> Any:
        return bind(server, address.replace("[::]", host, 1) if address.startswith("[::]:") else address)

    add_port_on_node_address.mlops_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_node_address


def json_value(prediction: Any) -> Any:
    """A prediction as a JSON value: numbers (numpy's too) as floats, arrays and tensors as lists."""
    if isinstance(prediction, bool | str) or prediction is None:
        return prediction
    if isinstance(prediction, numbers.Real):
        return float(prediction)
    if hasattr(prediction, "tolist"):
        return prediction.tolist()
    if isinstance(prediction, list | tuple):
        return [json_value(p) for p in prediction]
    if isinstance(prediction, dict):
        return {str(k): json_value(v) for k, v in prediction.items()}
    raise TypeError(f"a prediction of type {type(prediction).__name__} is not a JSON value")


def serve_request_id() -> str:
    """The id Serve's proxy gave this request (the client's ``X-Request-Id`` when it sent one): the one Serve
    answers in ``X-Request-Id`` too. Empty outside a Serve request."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # noqa: BLE001 - a Serve without it: the replica makes its own
        return ""


def problem_response(problem: Problem, request_id: str) -> Any:
    """The RFC 9457 answer to a refused request."""
    from starlette.responses import Response

    headers = {"X-Request-Id": request_id}
    body = problem.body(request_id)
    if "allow" in body:
        headers["Allow"] = str(body.pop("allow"))
    if problem.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="mlops"'
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=problem.status,
                    media_type="application/problem+json", headers=headers)


@dataclass(frozen=True)
class Loaded:
    """A version as a replica answers with it."""

    spec: ServeSpec
    predictor: Any
    document: bytes
    """The deployment's OpenAPI document for this version, as JSON."""


def load(spec: ServeSpec) -> Loaded:
    """Load ``spec``'s version: its artifact verified against its hash (a one-line refusal naming the object
    otherwise), then the trainer module's ``load_predictor``."""
    import tempfile
    from pathlib import Path

    from runtime.artifacts.store import ArtifactError, ArtifactStore
    from runtime.compute.worker import load_predictor_of
    from runtime.endpoint.contract import openapi_document

    store = ArtifactStore(spec.artifact_root)
    try:  # exactly what the state names, or a one-line refusal naming the object
        local = store.verified_path(spec.model_uri)
    except ArtifactError as error:
        raise RuntimeError("; ".join(d.message for d in error.diagnostics)) from None
    if local is None:
        local = store.get_file(spec.model_uri, Path(tempfile.mkdtemp()) / "model.pt")
    module_loader = load_predictor_of(spec.target, spec.code_hash, spec.repo_root)
    predictor = module_loader(Path(local), dict(spec.params))
    return Loaded(spec, predictor, json.dumps(openapi_document(spec.api), separators=(",", ":")).encode())


@functools.cache
def _replica_source_digest() -> str:
    """sha256 of the modules a replica runs (read once per process)."""
    import sys
    from pathlib import Path

    from runtime.artifacts import store
    from runtime.compute import worker
    from runtime.endpoint import contract, signature
    from runtime.monitor import inference_log

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], contract, signature, inference_log, store, worker):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def code_version(spec: ServeSpec, resources: ReplicaResources) -> str:
    """What makes Serve restart a deployment's replicas rather than hand them a new version in place: what they
    are constructed with, what they reserve, and the replica's own code."""
    what = json.dumps([spec.home(), dataclasses.asdict(resources), _replica_source_digest()], sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def _server_class() -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class ModelServer:
        """One replica: constructed once per deployment, handed each version by :meth:`reconfigure`."""

        def __init__(self, home: dict[str, str]) -> None:
            import random
            import uuid

            from runtime.monitor.inference_log import InferenceWriter, error_dir, log_dir

            bind_replica_grpc_to_node_address()
            if home.get("staging"):  # loading the model must not slow the live replicas down
                with contextlib.suppress(OSError):
                    os.nice(STAGING_NICENESS)
            self._random = random.Random()
            self._uuid = uuid.uuid4
            self.replica = uuid.uuid4().hex[:12]
            self.writer = InferenceWriter(log_dir(home["artifact_root"], home["deployment"]), self.replica)
            self.errors = error_dir(home["artifact_root"], home["deployment"])
            self.loaded: Loaded | None = None

        def reconfigure(self, config: dict[str, Any]) -> None:
            """Load the version ``config`` names (its artifact verified first), then answer with it: requests
            already running finish on the version before, the next ones get this one."""
            spec = ServeSpec.from_user_config(config)
            self.loaded = load(spec)

        async def __call__(self, request: Request) -> Any:
            from starlette.responses import Response

            from runtime.endpoint import contract as api

            request_id = serve_request_id() or self._uuid().hex
            started = time.perf_counter()
            loaded = self.loaded  # the version this request is answered by, whatever a switch does meanwhile
            assert loaded is not None, "Serve calls reconfigure before the first request"
            config = loaded.spec.api
            try:
                kind = api.check_route(request.method, api.sub_path(request.url.path,
                                                                    str(request.scope.get("root_path", ""))))
                api.check_token(config, request.headers.get("authorization"))
                if kind == "document":
                    return Response(loaded.document, media_type="application/json",
                                    headers={"X-Request-Id": request_id})
                api.check_content_type(request.headers.get("content-type"))
                api.check_declared_length(config, request.headers.get("content-length"))
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > config.max_body_bytes:
                        raise api.too_large(config)
                rows = api.rows_of(config, api.strict_json(bytes(body)))
                predictions = self._predict(loaded, rows, request_id)
                if predictions is None:
                    raise api.Problem(500, "model-failed", "The model failed",
                                      "the model's code failed on this request; find its traceback with `mlops logs "
                                      f"deployments.{loaded.spec.deployment} --request {request_id}`")
                ids = [self._uuid().hex for _ in rows]
                content = api.answer(predictions, ids, loaded.spec.version)
            except api.Problem as problem:
                return problem_response(problem, request_id)
            self._log(loaded, rows, predictions, ids, request_id, (time.perf_counter() - started) * 1000)
            return Response(content, media_type="application/json", headers={"X-Request-Id": request_id})

        def _predict(self, loaded: Loaded, rows: list[dict[str, Any]], request_id: str) -> list[Any] | None:
            """The model's predictions for ``rows`` as JSON values; ``None`` when its code failed (logged)."""
            import traceback

            from runtime.monitor.inference_log import ErrorRecord, write_error

            try:
                predictions = [json_value(p) for p in loaded.predictor(rows)]
                if len(predictions) != len(rows):
                    raise ValueError(f"load_predictor's callable returned {len(predictions)} predictions for "
                                     f"{len(rows)} rows")
                return predictions
            except Exception as exc:  # noqa: BLE001 - the model's own code: a 500 the request id finds
                write_error(self.errors, self.replica, ErrorRecord(
                    request_id, time.time(), loaded.spec.version, f"{type(exc).__name__}: {exc}",
                    traceback.format_exc()))
                return None

        def _log(self, loaded: Loaded, rows: list[dict[str, Any]], predictions: list[Any], ids: list[str],
                 request_id: str, latency_ms: float) -> None:
            from runtime.endpoint.contract import logged_inputs
            from runtime.monitor.inference_log import InferenceRecord

            now = time.time()
            for record_id, row, prediction in zip(ids, rows, predictions, strict=True):
                if self._random.random() < loaded.spec.sample_rate:
                    inputs = logged_inputs(loaded.spec.api, row)
                    self.writer.write(InferenceRecord(record_id, now, loaded.spec.version, inputs or {}, prediction,
                                                      latency_ms, request_id, len(rows)))

        def check_health(self) -> None:
            if self.loaded is None:  # pragma: no cover - reconfigure would have raised
                raise RuntimeError("no model loaded")

    return ModelServer


def start(http_port: int, http_host: str = "127.0.0.1") -> None:
    """Start Serve's controller and HTTP proxy on the connected cluster (idempotent; a running Serve keeps the
    address it listens on)."""
    import logging

    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are not the CLI's output

    serve.start(http_options={"host": http_host, "port": http_port})


def staging_name(deployment: str) -> str:
    return f"{deployment}{STAGING_SUFFIX}"


STAGING_NICENESS = 19
"""A staging replica yields the CPU to the live replicas while it starts (it only proves the version loads)."""


def _application(spec: ServeSpec, replicas: int, resources: ReplicaResources, staging: bool = False) -> Any:
    """The Serve application of one version (``staging``: the one replica that proves it, at low CPU priority).

    The deployment's Serve version is :func:`code_version`, so moving
    to another model version is a ``user_config`` change: Serve reconfigures the running replicas in place (no
    process start, no stall); when they must restart, ``max_surge_percent`` starts one replacement before an old
    replica stops."""
    server = _server_class().options(
        name=spec.deployment, num_replicas=max(1, replicas), ray_actor_options=resources.actor_options(),
        health_check_period_s=1, user_config=spec.user_config(), graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=2, max_surge_percent=1)
    home = {**spec.home(), "staging": "yes" if staging else ""}
    return server.options(version=code_version(spec, resources), _internal=True).bind(home)


def _run(application: Any, name: str, route: str) -> None:
    """Hand an application to Serve without waiting for it (``serve.run`` waits without a deadline)."""
    from ray import serve

    serve.run_many([serve.RunTarget(application, name=name, route_prefix=route)],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


def deploy(spec: ServeSpec, route: str, replicas: int, resources: ReplicaResources, http_port: int,
           previous: ServeSpec | None = None, timeout: float | None = None,
           http_host: str = "127.0.0.1") -> LiveDeployment:
    """Blue/green: prove the new version on a staging route, then roll the live route over to it.

    ``previous`` is the version serving now (what the live application is put back to when the new
    one does not become healthy there). ``timeout`` defaults to :data:`ROLLOUT_TIMEOUT_S` for each of
    the two steps. Raises :class:`RolloutFailed`; the old version then serves.
    """
    timeout = ROLLOUT_TIMEOUT_S if timeout is None else timeout
    start(http_port, http_host)
    remove_staging(spec.deployment)  # left behind by an interrupted rollout
    name = spec.deployment
    if live(name) is None:  # nothing serving yet: nothing to protect, start it in place
        with _undone_unless_healthy(name):
            _run(_application(spec, replicas, resources), name, route)
            _wait_running(name, spec.version, timeout)
        return live(name) or LiveDeployment(name, spec.version, "Progressing", "DEPLOYING", 0)
    staging = staging_name(name)
    try:
        _run(_application(spec, 1, resources, staging=True), staging, f"{STAGING_PREFIX}/{name}")
        _wait_running(staging, spec.version, timeout)
    finally:  # healthy or not, interrupted or not: staging has done its work
        _delete(staging)
    try:
        _run(_application(spec, replicas, resources), name, route)
        _wait_running(name, spec.version, timeout)
    except BaseException:
        if previous is not None:  # put the live route back to the version that served
            with contextlib.suppress(Exception):
                _run(_application(previous, replicas, resources), name, route)
                _wait_running(name, previous.version, timeout)
        raise
    return live(name) or LiveDeployment(name, spec.version, "Progressing", "DEPLOYING", 0)


@contextlib.contextmanager
def _undone_unless_healthy(name: str) -> Any:
    """Delete application ``name`` when the block does not finish (a failure, a deadline, Ctrl-C)."""
    try:
        yield
    except BaseException:
        _delete(name)
        raise


def _wait_running(name: str, version: int, timeout: float) -> None:
    """Poll until application ``name`` runs ``version``; :class:`RolloutFailed` with the replica's cause
    when it fails or is not running within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    app = None
    while time.monotonic() < deadline:
        app = _status(name)
        state = _state(app)
        if state == "RUNNING" and version in _versions(name).values():
            return
        if state == "DEPLOY_FAILED":
            raise RolloutFailed(f"version {version} did not start: {cause(app)}")
        time.sleep(0.25)
    waited = cause(app) if app is not None else "Serve never created the application"
    raise RolloutFailed(f"version {version} was not healthy within {timeout:.0f}s: {waited}")


def cause(app: Any) -> str:
    """The one line of Serve's messages about ``app`` that says why it is not running."""
    messages = [getattr(app, "message", "") or ""]
    for deployment in (getattr(app, "deployments", None) or {}).values():
        messages.append(getattr(deployment, "message", "") or "")
    lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
    exceptions = [m.group(1) for line in lines if (m := _EXCEPTION_LINE.match(line))]
    if exceptions:
        return exceptions[-1]
    scheduling = [line for line in lines if "to be scheduled" in line or "Resources required" in line]
    if scheduling:
        return scheduling[0]
    return lines[0] if lines else f"application is {_state(app) or 'unknown'}"


def _status(name: str) -> Any:
    from ray import serve

    return serve.status().applications.get(name)


def _state(app: Any) -> str:
    return str(app.status).rsplit(".", 1)[-1] if app is not None else ""


def _versions(app_name: str) -> dict[str, int]:
    """Deployment name -> the version its ``user_config`` labels it with (what Serve is told to run), in
    application ``app_name`` (a staging application's one deployment has the live one's name)."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        client: Any = _get_global_client()
        details: dict[str, Any] = ray.get(client._controller.get_serve_instance_details.remote(),
                                          timeout=CONTROLLER_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - Serve's controller did not answer: no version known
        return {}
    versions = {}
    for name, app in (details.get("applications") or {}).items():
        if name != app_name:
            continue
        for deployment_name, deployment in (app.get("deployments") or {}).items():
            config = (deployment.get("deployment_config") or {}).get("user_config") or {}
            if isinstance(config, dict) and isinstance(config.get("version"), int):
                versions[deployment_name] = config["version"]
    return versions


def _delete(name: str) -> None:
    from ray import serve

    with contextlib.suppress(Exception):  # already gone, or not gone within its deadline (reported by live())
        serve.delete(name, _blocking=False)
        deadline = time.monotonic() + DELETE_TIMEOUT_S
        while time.monotonic() < deadline and _status(name) is not None:
            time.sleep(0.2)


def undeploy(name: str) -> None:
    """Remove a deployment's application."""
    _delete(name)


def remove_staging(deployment: str) -> bool:
    """Remove the staging application an interrupted rollout of ``deployment`` left behind."""
    if _status(staging_name(deployment)) is None:
        return False
    _delete(staging_name(deployment))
    return True


def live(name: str) -> LiveDeployment | None:
    """What Serve itself says about a deployment (``None`` when Serve has no such application)."""
    app = _status(name)
    if app is None:
        return None
    status = _state(app)
    version = _versions(name).get(name)
    replicas = 0
    for deployment_name, deployment in app.deployments.items():
        if version is None and APP_SUFFIX in deployment_name:
            with contextlib.suppress(ValueError):
                version = int(deployment_name.rsplit(APP_SUFFIX, 1)[1])
        replicas += sum(deployment.replica_states.values()) if deployment.replica_states else 0
    health: Health = {"RUNNING": "Healthy", "DEPLOYING": "Progressing", "NOT_STARTED": "Progressing"}.get(
        status, "Degraded")  # type: ignore[assignment]
    return LiveDeployment(name, version, health, status, replicas)


def applications() -> list[str]:
    """Serve's applications other than staging ones."""
    from ray import serve

    return [name for name in serve.status().applications if not name.endswith(STAGING_SUFFIX)]


def staging_applications() -> list[str]:
    """Staging applications still in Serve (an interrupted rollout's)."""
    from ray import serve

    return [name for name in serve.status().applications if name.endswith(STAGING_SUFFIX)]
