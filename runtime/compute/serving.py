"""Realtime deployments on Ray Serve: one Serve application per deployment, at its route.

A model's serving code is the ``load_predictor(model_path, params)`` function of its trainer's
module: it returns a callable from a list of input rows (dicts) to a list of predictions. A replica
(:mod:`runtime.compute.replica`) loads the model version's artifact once, answers
``POST {"instances": [{...}, ...]}`` with ``{"predictions": [...], "ids": [...], "version": N}`` and
everything else with the errors of :mod:`runtime.endpoint.contract`.

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
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from runtime.compute.replica import ReplicaResources, ServeSpec, code_version, server_class
from runtime.compute.shipping import runtime_env

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
class LiveDeployment:
    name: str
    version: int | None
    health: Health
    status: str
    replicas: int


class RolloutFailed(Exception):
    """The new version did not start; the old one keeps serving."""


def start(http_port: int, http_host: str = "127.0.0.1") -> None:
    """Start Serve's controller and HTTP proxy on the connected cluster (idempotent; a running Serve keeps the
    address it listens on)."""
    import logging

    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are not the CLI's output

    serve.start(http_options={"host": http_host, "port": http_port})


def staging_name(deployment: str) -> str:
    return f"{deployment}{STAGING_SUFFIX}"




def _application(spec: ServeSpec, replicas: int, resources: ReplicaResources, staging: bool = False) -> Any:
    """The Serve application of one version (``staging``: the one replica that proves it, at low CPU priority).

    The deployment's Serve version is :func:`code_version`, so moving
    to another model version is a ``user_config`` change: Serve reconfigures the running replicas in place (no
    process start, no stall); when they must restart, ``max_surge_percent`` starts one replacement before an old
    replica stops."""
    actor_options = resources.actor_options()
    if spec.code_uri:
        actor_options["runtime_env"] = runtime_env(spec.code_uri)
    server = server_class().options(
        name=spec.deployment, num_replicas=max(1, replicas), ray_actor_options=actor_options,
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
    return _all_versions().get(app_name, {})


def _all_versions() -> dict[str, dict[str, int]]:
    """Per application, deployment name -> the version its ``user_config`` labels it with (one question
    to Serve's controller; ``{}`` when it does not answer)."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        client: Any = _get_global_client()
        details: dict[str, Any] = ray.get(client._controller.get_serve_instance_details.remote(),
                                          timeout=CONTROLLER_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - Serve's controller did not answer: no version known
        return {}
    versions: dict[str, dict[str, int]] = {}
    for name, app in (details.get("applications") or {}).items():
        for deployment_name, deployment in (app.get("deployments") or {}).items():
            config = (deployment.get("deployment_config") or {}).get("user_config") or {}
            if isinstance(config, dict) and isinstance(config.get("version"), int):
                versions.setdefault(name, {})[deployment_name] = config["version"]
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
    return _live(name, app, _versions(name)) if app is not None else None


def _live(name: str, app: Any, versions: dict[str, int]) -> LiveDeployment:
    status = _state(app)
    version = versions.get(name)
    replicas = 0
    for deployment_name, deployment in app.deployments.items():
        if version is None and APP_SUFFIX in deployment_name:
            with contextlib.suppress(ValueError):
                version = int(deployment_name.rsplit(APP_SUFFIX, 1)[1])
        replicas += sum(deployment.replica_states.values()) if deployment.replica_states else 0
    health: Health = {"RUNNING": "Healthy", "DEPLOYING": "Progressing", "NOT_STARTED": "Progressing"}.get(
        status, "Degraded")  # type: ignore[assignment]
    return LiveDeployment(name, version, health, status, replicas)


@dataclass(frozen=True)
class ServeSnapshot:
    """Ray Serve's applications, asked once: what each deployment runs, and the staging ones left over."""

    live: dict[str, LiveDeployment]
    """Application name -> what Serve runs (a deployment without an application is absent)."""
    staging: frozenset[str]
    """Staging applications still in Serve (an interrupted rollout's)."""


Reach = Literal["reachable", "down", "unreachable", "unused"]
"""Ray Serve, seen from here: connected; the local cluster is not running; ``cluster.address`` cannot be
reached; no realtime deployment to ask about."""


@dataclass(frozen=True)
class ServeView:
    """What Ray Serve runs, asked once per plan."""

    reach: Reach
    snapshot: ServeSnapshot | None = None
    """Serve's applications (``None`` unless reachable and it answered)."""
    error: str | None = None
    """Why a reachable Serve did not answer."""


def snapshot() -> ServeSnapshot:
    """Every application Serve runs: one ``serve.status()``, and one question to its controller for the
    versions when any application exists."""
    from ray import serve

    applications = serve.status().applications
    versions = _all_versions() if applications else {}
    live = {name: _live(name, app, versions.get(name, {})) for name, app in applications.items()
            if not name.endswith(STAGING_SUFFIX)}
    return ServeSnapshot(live, frozenset(name for name in applications if name.endswith(STAGING_SUFFIX)))


def applications() -> list[str]:
    """Serve's applications other than staging ones."""
    from ray import serve

    return [name for name in serve.status().applications if not name.endswith(STAGING_SUFFIX)]


def staging_applications() -> list[str]:
    """Staging applications still in Serve (an interrupted rollout's)."""
    from ray import serve

    return [name for name in serve.status().applications if name.endswith(STAGING_SUFFIX)]
