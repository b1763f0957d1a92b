"""The entry point of every mlops Ray task: report the start, run the work, return a :class:`TaskResult`.

A trial with ``workers > 1`` goes to Ray Train (:mod:`runtime.compute.distributed`); everything else runs
in this worker process (:func:`runtime.compute.worker.execute`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import socket
import threading
import time
from typing import Any

from runtime.artifacts.store import ArtifactError
from runtime.compute.distributed import run_distributed
from runtime.compute.task import TaskResult, TaskSpec
from runtime.compute.worker import execute

START_NAMESPACE = "mlops"
"""Ray key-value namespace of the tasks' start reports."""
REPORT_AFTER_S = 1.0
"""A task reports its start once it has run this long (the driver looks for reports after 2 s)."""
_REPORTS: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
_RUNNING: set[str] = set()
"""Start keys of the tasks this worker process runs now."""
_REPORTER: threading.Thread | None = None
_HOST = socket.gethostname()


def ready() -> int:
    """A task that does nothing: running it makes a worker process import this module, and what it imports."""
    return os.getpid()


def run_task(fields: dict[str, Any], *upstream: TaskResult) -> TaskResult:
    """Run one transform, trial or evaluation; store its outputs; return what the driver records.

    ``fields`` are the :class:`TaskSpec`'s (Ray serializes a dict of plain values faster than a dataclass).

    ``upstream`` holds the results of tasks this one was chained to (Ray passes them when they finish;
    ``spec.chained`` says which input each one is). If one of them failed, nothing runs and the result
    is ``upstream_failed``. A trial with ``workers > 1`` is handed to
    :func:`runtime.compute.distributed.run_distributed`, which runs :func:`execute` on every Ray Train worker.
    """
    spec = TaskSpec(**fields)
    if not spec.started_key:
        return _run_task(spec, upstream)
    _report_start(spec.started_key)
    try:
        return _run_task(spec, upstream)
    finally:
        _RUNNING.discard(spec.started_key)


def _run_task(spec: TaskSpec, upstream: tuple[TaskResult, ...]) -> TaskResult:
    """:func:`run_task` once the task has reported its start."""
    if spec.chained:
        for name, index in spec.chained.items():
            parent = upstream[index]
            if parent.status != "succeeded":
                return TaskResult("upstream_failed", f"input {name}: {parent.error or 'failed'}")
        spec = dataclasses.replace(spec, inputs={**spec.inputs, **{name: str(upstream[index].artifact)
                                                                  for name, index in spec.chained.items()}},
                                   chained={})
    if spec.kind == "trial" and spec.workers > 1:
        return run_distributed(spec)
    try:
        return TaskResult.of(execute(spec))
    except ArtifactError as error:  # an input or the model is missing or corrupt: the node fails, naming it
        return TaskResult.failed("; ".join(d.message for d in error.diagnostics), host=_HOST, pid=os.getpid())


def _report_start(key: str) -> None:
    """Tell the driver this task runs, once it has run for :data:`REPORT_AFTER_S` (a task that ends sooner
    reports by ending). A thread of the worker process writes the report, off the task's path."""
    global _REPORTER
    if _REPORTER is None:
        _REPORTER = threading.Thread(target=_write_reports, name="mlops-start-reports", daemon=True)
        _REPORTER.start()
    _RUNNING.add(key)
    _REPORTS.put((key, time.time()))


def _write_reports() -> None:
    from ray.experimental import internal_kv

    while True:
        key, at = _REPORTS.get()
        time.sleep(max(0.0, at + REPORT_AFTER_S - time.time()))
        if key in _RUNNING:
            with contextlib.suppress(Exception):  # best effort: without it the driver cannot tell a run from a wait
                internal_kv._internal_kv_put(key, repr(at).encode(), namespace=START_NAMESPACE)


