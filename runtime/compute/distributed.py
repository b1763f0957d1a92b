"""Distributed training: a trial with ``resources.workers > 1`` runs on Ray Train's ``TorchTrainer``.

Where it runs: the trial's Ray task (submitted by :func:`runtime.compute.ray_backend.submit` with zero CPUs
and GPUs) calls :func:`run_distributed`, which blocks in ``TorchTrainer.fit()``. Ray Train's
controller is a zero-CPU actor too, so the only resources held are the workers' own
(``resources.cpus`` / ``gpus`` / ``memory`` *each*, reserved together as one placement group):
``workers: 2, cpus: 1`` fits a 2-CPU cluster, where a coordinator holding a CPU would leave the
placement group waiting forever. Running ``fit()`` in a task rather than in the driver keeps the
apply loop free to schedule other nodes, lets a timeout cancel it like any node (killing the task
kills the controller and its workers, which it owns), and makes a distributed trial look like any
other to the executor: the same result dict, retries and run record.

On each worker ``train_loop`` runs :func:`runtime.compute.worker.execute` with ``ctx.rank`` and
``ctx.world_size`` set; ``torch.distributed`` is initialised by Ray Train (gloo on CPU, nccl on
GPU). Rank 0 stores the model artifact; its returned ``TrainResult`` and ``ctx.log_metric`` values
are what the run records (``Result.return_value``). The ranks' logs are gathered and stored as the
run's one log. A rank whose callable fails raises, so Ray Train stops the whole group (``max_failures
= 0``: the executor's ``retries`` apply, as for any node). Ray Train's own files go to a temporary
``storage_path`` that is removed afterwards; nothing is written to ``~/ray_results``.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime.compute.task import TaskResult, TaskSpec
from runtime.compute.worker import execute
from runtime.errors import TaskError

LOG_SEPARATOR = "===== rank {rank} of {world_size} ====="


class RankFailed(RuntimeError):
    """The user's callable failed on one rank; carries that rank's error and log."""

    def __init__(self, rank: int, error: str, log: str) -> None:
        super().__init__(f"rank {rank}: {error}")
        self.rank = rank
        self.error = error
        self.log = log

    def __reduce__(self) -> tuple[type[RankFailed], tuple[int, str, str]]:
        return RankFailed, (self.rank, self.error, self.log)


def run_distributed(spec: TaskSpec) -> TaskResult:
    """Train ``spec`` on ``spec.workers`` Ray Train workers; rank 0's result, its ranks' logs stored together."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from runtime.artifacts.store import ArtifactStore

    started = time.time()
    resources = dict(spec.worker_resources) or {"CPU": 1.0}
    with tempfile.TemporaryDirectory(prefix="mlops-train-") as storage:
        loop: Any = train_loop  # Ray's stubs type the loop as returning None; Ray Train v2 keeps rank 0's value
        trainer = TorchTrainer(
            loop, train_loop_config={"spec": spec},
            scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpus > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=f"mlops-{spec.run_id or 'trial'}", storage_path=storage,
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            with _environment(RAY_TRAIN_ENABLE_PRINT_PATCH="0"):  # print() is captured in the run's log as is
                result: Any = trainer.fit()
            value = result.return_value
        except Exception as exc:  # noqa: BLE001 - a failed training is this node's failure, reported
            error, log = _failure(exc)
            store = ArtifactStore(spec.artifact_root)
            return TaskResult.failed(error, log_uri=store.put_bytes(log.encode()), started_at=started,
                                     finished_at=time.time())
    if not isinstance(value, dict) or value.get("status") != "succeeded":
        raise TaskError(f"rank 0 of {spec.node_id} returned no result: {value!r}")
    return TaskResult.of({**value, "started_at": started})


def train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's ``train_loop_per_worker``: run the user's trainer on this rank; rank 0's result is returned."""
    import ray.train
    import torch.distributed as dist

    spec: TaskSpec = config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    outcome = execute(spec, rank, world_size, _device(spec.gpus))
    log = f"{LOG_SEPARATOR.format(rank=rank, world_size=world_size)}\n{outcome.pop('log', '')}"
    if outcome["status"] != "succeeded":
        raise RankFailed(rank, str(outcome.get("error")), log)
    logs: list[Any] = [None] * world_size
    dist.all_gather_object(logs, log)  # a rank that failed raised instead, and Ray Train stops the others
    if rank != 0:
        return {}
    from runtime.artifacts.store import ArtifactStore

    outcome["log_uri"] = ArtifactStore(spec.artifact_root).put_bytes("\n".join(map(str, logs)).encode())
    return outcome


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (which Ray Train passes on to its controller and workers) for a while."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _device(gpus: float) -> str:
    if gpus <= 0:
        return "cpu"
    import ray.train.torch

    return str(ray.train.torch.get_device())


def _failure(exc: Exception) -> tuple[str, str]:
    """A short error for the run record and the full log, from what ``fit()`` raised."""
    failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    causes = [(rank, _cause(failure)) for rank, failure in sorted(failures.items())]
    ranks_failed = [cause for _, cause in causes if isinstance(cause, RankFailed)]
    if ranks_failed:
        return str(ranks_failed[0]), "\n".join(cause.log for cause in ranks_failed)
    detail = "".join(traceback.format_exception(exc))
    if causes:
        rank, cause = causes[0]
        return f"rank {rank}: {type(cause).__name__}: {cause}", detail
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}", detail


def _cause(failure: BaseException) -> BaseException:
    """The exception a worker raised, unwrapped from Ray's ``RayTaskError`` (``.cause``) and ``__cause__``."""
    seen = {id(failure)}
    while not isinstance(failure, RankFailed):
        inner = getattr(failure, "cause", None) or failure.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        failure = inner
    return failure
