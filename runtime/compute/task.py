"""The typed boundary between the driver and a Ray task: a :class:`TaskSpec` in, a :class:`TaskResult` out.

Both are plain, picklable records with no Ray in them; :mod:`runtime.compute.entry` is what runs between
them inside the task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

TaskStatus = Literal["succeeded", "failed", "upstream_failed"]


@dataclass
class TaskSpec:
    """The picklable description of one node's work."""

    node_id: str
    kind: str
    """transform | trial | evaluate"""
    target: str
    """``module:function``"""
    code_hash: str | None
    repo_root: str
    artifact_root: str
    inputs: dict[str, str]
    """Input name -> artifact URI (a file, or ``dir:`` for a directory)."""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    gpus: float = 0.0
    model_uri: str | None = None
    run_id: str = ""
    workers: int = 1
    """More than 1: a trial trained by that many Ray Train workers (:mod:`runtime.compute.distributed`)."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Ray resources of each worker of a distributed trial (``CPU``, ``GPU``, ``memory``); set on submit."""
    chained: dict[str, int] = field(default_factory=dict)
    """Input name -> index of the upstream task result (passed to :func:`run_task`) that provides it."""
    started_key: str = ""
    """Where the task reports that it started (Ray's key-value store), so the driver can tell a run from a
    task still waiting for resources."""
    train_schema: dict[str, str] = field(default_factory=dict)
    """A trial's training dataset's declared ``schema`` (column -> type), for its input signature."""
    code_uri: str = ""
    """The shipped package of the project's code the task runs in (:mod:`runtime.compute.shipping`); empty:
    it imports from ``repo_root`` on this machine. Shipped, ``repo_root`` is empty too."""


@dataclass
class TaskResult:
    """What one task reports to the driver (:meth:`~runtime.apply.executor.Executor` records it)."""

    status: TaskStatus
    error: str | None = None
    """One line: why it failed (the user's exception, a missing input, a worker that died)."""
    artifact: str | None = None
    """The URI of what it made: a transform's directory, a trial's model."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The last value of each metric it logged, and what it returned."""
    signature: dict[str, Any] | None = None
    """A trial's input signature record (:mod:`runtime.endpoint.signature`)."""
    steps: list[tuple[str, int, float]] = field(default_factory=list)
    """Every logged metric point: (name, step, value)."""
    log_uri: str | None = None
    device: str | None = None
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None
    """When the user's code started, by the worker's clock (``None``: it never ran)."""
    finished_at: float | None = None
    never_started: bool = False
    """It waited for resources until the driver gave up: not retried."""

    @classmethod
    def of(cls, values: dict[str, Any]) -> TaskResult:
        """From the plain dict a worker builds (keys it does not know, like a rank's ``log``, are dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def failed(cls, error: str, **more: Any) -> TaskResult:
        """A failure the driver or the task's entry point observed itself."""
        return cls("failed", error, **more)
