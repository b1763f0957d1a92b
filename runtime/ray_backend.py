"""The one module that touches Ray: connecting, submitting tasks with resources, waiting, cancelling."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from runtime.worker import TaskSpec, run_task

_REMOTE: Any = None


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto`` or ``ray://...``), or start an embedded local Ray when it is ``None``."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
                              "namespace": "mlops", "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """Total resources of the connected cluster (``CPU``, ``GPU``, ``memory``, ...)."""
    import ray

    return {key: float(value) for key, value in ray.cluster_resources().items()}


def _remote() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(run_task)
    return _REMOTE


def submit(spec: TaskSpec, cpus: float, gpus: float, memory_bytes: int | None) -> Any:
    """Run ``spec`` as a Ray task; a worker that dies is retried by Ray (``max_retries``)."""
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 3, "retry_exceptions": False,
                               "name": spec.node_id}
    if memory_bytes:
        options["memory"] = memory_bytes
    return _remote().options(**options).remote(spec)


def wait(refs: Sequence[Any], timeout: float) -> tuple[list[Any], list[Any]]:
    """Refs that finished within ``timeout`` seconds, and those still running."""
    import ray

    if not refs:
        return [], []
    ready, pending = ray.wait(list(refs), num_returns=1, timeout=timeout)
    return ready, pending


def result(ref: Any) -> dict[str, Any]:
    """The task's returned dict; a task whose worker kept dying becomes a failure dict."""
    import ray

    try:
        value: dict[str, Any] = ray.get(ref)
        return value
    except ray.exceptions.RayError as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


def cancel(ref: Any) -> None:
    import ray

    ray.cancel(ref, force=True)
