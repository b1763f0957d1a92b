"""Ray's core API for the rest of mlops: connecting, reading resources, submitting tasks, waiting, cancelling."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runtime.compute.entry import START_NAMESPACE, ready, run_task
from runtime.compute.shipping import runtime_env
from runtime.compute.task import TaskResult, TaskSpec

if TYPE_CHECKING:
    from runtime.compute.cluster import LocalCluster

_REMOTE: Any = None
_DISTRIBUTED: set[str] = set()
"""Ids of the running refs that coordinate a Ray Train run (cancelled gracefully, see :func:`cancel`)."""
CANCEL_GRACE_S = 15.0
COALESCE_S = 0.015
"""After the first task of a round finishes, how long to wait for others, so that one round records
several (one sync of the artifact store and one state commit for all). Transforms behind running ones
are queued on Ray already and start without the driver, so the wait holds back only the others."""


def connected() -> bool:
    """Whether this process has already joined (or started) a Ray cluster."""
    import ray

    return bool(ray.is_initialized())


_EMBEDDED: list[LocalCluster] = []
"""The embedded head this process started, stopped by :func:`shutdown` or at this process's exit."""


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto`` or ``ray://...``), or start an embedded local Ray when it is ``None``: the
    head ``mlops up`` starts (:func:`runtime.compute.cluster.start_embedded`), for this process alone."""
    import ray

    if ray.is_initialized():
        return
    if not address:
        from runtime.compute import cluster

        _EMBEDDED.append(cluster.start_embedded(num_cpus))
        address = _EMBEDDED[-1].address
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
                              "namespace": "mlops", "configure_logging": False}
    if address.partition(":")[0] in ("127.0.0.1", "localhost"):
        # This machine's alone (the embedded Ray, or mlops up's): every process of it binds the loopback
        # address, and a driver joining it must not turn 127.0.0.1 into the machine's address (runtime.compute.cluster).
        from ray._private import ray_constants

        from runtime.compute.cluster import LOOPBACK_ENV

        os.environ.update(LOOPBACK_ENV)  # for the processes it starts
        ray_constants.ENABLE_RAY_CLUSTER = False  # read when this process picks the node's address
    try:
        ray.init(address=address, **kwargs)
    except BaseException:
        _stop_embedded()
        raise


def _stop_embedded() -> None:
    if not _EMBEDDED:
        return
    from runtime.compute import cluster

    while _EMBEDDED:
        cluster.stop(_EMBEDDED.pop())


atexit.register(_stop_embedded)  # a process that ends without shutdown(): nothing to do unless it started one


def preload() -> None:
    """Import Ray now (a process that will join a cluster soon, while it waits for it to start)."""
    import ray  # noqa: F401


def warm_workers(count: int) -> None:
    """Have ``count`` of this driver's worker processes start and import the tasks' entry point now, so that its
    first tasks find them ready (nothing waits for them: a driver calls this before it takes work)."""
    import ray

    warm = ray.remote(num_cpus=1, max_retries=0)(ready)
    for _ in range(count):
        warm.remote()


def shutdown() -> None:
    """Leave Ray, stopping the embedded head this process started; Serve's cached client is dropped too (a new
    session would reuse its job id)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _stop_embedded()
    _with_resources.cache_clear()
    serve_context = sys.modules.get("ray.serve.context")  # never imported here: nothing cached (and no 1 s import)
    if serve_context is not None:
        with contextlib.suppress(Exception):  # Serve's internals moved: nothing cached to drop
            serve_context._set_global_client(None)


def cluster_resources() -> dict[str, float]:
    """Total resources of the connected cluster (``CPU``, ``GPU``, ``memory``, ...)."""
    import ray

    return {key: float(value) for key, value in ray.cluster_resources().items()}


STARTED_PREFIX = "started/"


GCS_TIMEOUT_S = 5.0


def resources_at(address: str, timeout: float = GCS_TIMEOUT_S) -> dict[str, float]:
    """CPUs and GPUs of the alive nodes of the cluster at ``address``, read from its control store (GCS)
    without joining it as a driver (planning need not start a Ray session)."""
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

    try:
        client = InnerGcsClient.standalone(address, None, int(timeout * 1000))
        nodes = client.get_all_node_info(timeout=timeout)
    except Exception as error:  # noqa: BLE001 - Ray's RPC errors: one line naming the cluster
        raise ConnectionError(f"cannot read the resources of the Ray cluster at {address}: {error}") from None
    totals = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes.values():
        if node.state == GcsNodeInfo.ALIVE:
            for key in totals:
                totals[key] += float(node.resources_total.get(key, 0.0))
    return totals


def started(prefix: str, run_ids: set[str]) -> dict[str, float]:
    """Run id -> start time, for those of ``run_ids`` whose task reported its start under ``prefix``."""
    from ray.experimental import internal_kv

    found = {}
    try:
        keys = internal_kv._internal_kv_list(prefix, namespace=START_NAMESPACE)
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else str(key)
            run_id = name[len(prefix):]
            if run_id in run_ids:
                value = internal_kv._internal_kv_get(name, namespace=START_NAMESPACE)
                found[run_id] = float(value) if value else time.time()
    except Exception:  # noqa: BLE001 - the key-value store did not answer: nothing known to have started
        return {}
    return found


def forget_starts(prefix: str) -> None:
    """Drop the start reports under ``prefix`` (an apply's, once it ends)."""
    import ray
    from ray.experimental import internal_kv

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            internal_kv._internal_kv_del(prefix, del_by_prefix=True, namespace=START_NAMESPACE)


def available_resources() -> dict[str, float]:
    """Resources of the connected cluster free right now."""
    import ray

    return {key: float(value) for key, value in ray.available_resources().items()}


def _remote() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(run_task)
    return _REMOTE


@functools.lru_cache(maxsize=64)
def _with_resources(cpus: float, gpus: float, memory_bytes: int | None, code_uri: str = "") -> Any:
    """The task function with these resources, run in the shipped code ``code_uri`` when given (made once per
    combination: ``.options`` is not free)."""
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 3, "retry_exceptions": False}
    if memory_bytes:
        options["memory"] = memory_bytes
    if code_uri:
        options["runtime_env"] = runtime_env(code_uri)
    return _remote().options(**options)


def submit(spec: TaskSpec, cpus: float, gpus: float, memory_bytes: int | None, upstream: Sequence[Any] = ()) -> Any:
    """Run ``spec`` as a Ray task; a worker that dies is retried by Ray (``max_retries``).

    ``upstream`` are refs of running tasks whose results this one takes as inputs (``spec.chained``):
    Ray starts it when they finish, without a round trip through the driver.

    A distributed trial (``spec.workers > 1``) asks these resources for each of its Ray Train
    workers; its coordinating task holds none itself, so it cannot starve the workers it waits for.
    """
    if spec.workers > 1:
        per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {}),
                      **({"memory": float(memory_bytes)} if memory_bytes else {})}
        spec = dataclasses.replace(spec, worker_resources=per_worker)
        cpus, gpus, memory_bytes = 0.0, 0.0, None
    ref = _with_resources(cpus, gpus, memory_bytes, spec.code_uri).remote(vars(spec), *upstream)  # plain data
    if spec.workers > 1:
        _DISTRIBUTED.add(ref.hex())
    return ref


def wait(refs: Sequence[Any], timeout: float) -> tuple[list[Any], list[Any]]:
    """Refs that finished within ``timeout`` seconds, and those still running.

    Once one has finished, the others that finish within ``COALESCE_S`` come with it: the executor
    then records them in one round (one sync of the artifact store, one state commit).
    """
    import ray

    if not refs:
        return [], []
    ready, pending = ray.wait(list(refs), num_returns=1, timeout=timeout)
    if ready and pending:
        more, pending = ray.wait(pending, num_returns=len(pending), timeout=COALESCE_S)
        ready += more
    return ready, pending


def results(refs: Sequence[Any]) -> list[TaskResult]:
    """:func:`result` of finished tasks, fetched together."""
    import ray

    try:
        values: list[TaskResult] = ray.get(list(refs))
        for ref in refs:
            _DISTRIBUTED.discard(ref.hex())
        return values
    except ray.exceptions.RayError:  # one of them failed: fetch them one by one to tell which
        return [result(ref) for ref in refs]


def result(ref: Any) -> TaskResult:
    """The task's result; a task whose worker kept dying is a failed one."""
    import ray

    _DISTRIBUTED.discard(ref.hex())
    try:
        value: TaskResult = ray.get(ref)
        return value
    except ray.exceptions.RayError as exc:
        return TaskResult.failed(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def cancel(ref: Any) -> None:
    """Stop a running task by killing its worker.

    A distributed trial is interrupted first (``KeyboardInterrupt``: Ray Train aborts its run and
    removes the workers' placement group) and killed only if it is still running after
    ``CANCEL_GRACE_S``. Killed at once, its placement group would outlive it, holding the workers'
    CPUs until the driver exits: Ray Train's own cleaner needs the dashboard, which is not started.
    """
    import ray

    if ref.hex() in _DISTRIBUTED:
        _DISTRIBUTED.discard(ref.hex())
        ray.cancel(ref, force=False)
        ready, _ = ray.wait([ref], timeout=CANCEL_GRACE_S)
        if ready:
            return
    ray.cancel(ref, force=True)


def call(function: Any, argument: Any, cpus: float, gpus: float, code_uri: str = "") -> Any:
    """Run ``function(argument)`` as one Ray task with these resources (in the shipped code ``code_uri`` when
    given) and wait for its result."""
    import ray

    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 3}
    if code_uri:
        options["runtime_env"] = runtime_env(code_uri)
    return ray.get(ray.remote(function).options(**options).remote(argument))
