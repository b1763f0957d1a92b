"""``resources.workers > 1``: real DDP training on Ray Train (gloo on CPU), through ``apply_project``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.artifacts.store import ArtifactStore

PIPELINE = '''
import time

import torch
import torch.distributed as dist
from torch import nn

from runtime.context import TrainResult


def train(ctx):
    """Logistic regression, full batch; under DDP each rank takes every world_size-th row."""
    if ctx.params.get("fail_rank") == ctx.rank:
        raise RuntimeError(f"boom on rank {ctx.rank}")
    time.sleep(float(ctx.params.get("sleep", 0)))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) > 0).float()
    model = nn.Linear(4, 1)
    metrics = {"world_size": float(ctx.world_size), "rank": float(ctx.rank)}
    if ctx.world_size > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        x, y = x[ctx.rank::ctx.world_size], y[ctx.rank::ctx.world_size]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        optimizer.step()
        ctx.log_metric("loss", float(loss))
    core = model.module if hasattr(model, "module") else model
    flat = torch.cat([p.detach().flatten() for p in core.parameters()])
    if ctx.world_size > 1:
        ranks = torch.tensor([float(ctx.rank + 1)])
        dist.all_reduce(ranks)
        replicas = [torch.zeros_like(flat) for _ in range(ctx.world_size)]
        dist.all_gather(replicas, flat)
        metrics["rank_sum"] = float(ranks)
        metrics["replicas_in_sync"] = float(all(torch.equal(r, flat) for r in replicas))
    print(f"trained on rank {ctx.rank} of {ctx.world_size}")
    return TrainResult(model={k: v.detach().clone() for k, v in core.state_dict().items()}, metrics=metrics)
'''


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def spec(workers: int, **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1",
        "project": "ddp",
        "datasets": {"raw": {"path": "data/raw.csv"}},
        "models": {"logreg": {"train": "pipeline:train", "data": {"train": "raw"}, "params": params, "seed": 5,
                              "resources": {"cpus": 1, "workers": workers}}},
    }


def write(root: Path, make_project: Any, body: dict[str, Any]) -> Path:
    return make_project(root, body, files={"data/raw.csv": "a\n1\n"}, pipeline=PIPELINE)


def weights(project: Any) -> dict[str, torch.Tensor]:
    with opened(project) as (workspace, store):
        version = store.get_model_version("logreg", 1)
        assert version is not None
        return ArtifactStore(workspace.artifact_root).load_model(version.artifact_uri)


def test_two_workers_train_with_ddp_and_rank_0_result_is_the_version(tmp_path: Path, make_project: Any) -> None:
    distributed = load_project(write(tmp_path / "ddp", make_project, spec(2)))
    outcome = apply_project(distributed)
    assert outcome.result.ok, outcome.result.outcomes
    with opened(distributed) as (workspace, store):
        version = store.get_model_version("logreg", 1)
        assert version is not None
        assert version.metrics["world_size"] == 2.0 and version.metrics["rank"] == 0.0
        assert version.metrics["rank_sum"] == 3.0  # ranks 0 and 1 both joined the all-reduce
        assert version.metrics["replicas_in_sync"] == 1.0  # DDP kept both replicas identical
        (run,) = store.list_runs("models.logreg")
        assert run.status == "succeeded" and run.run_id == version.run_id
        assert len([p for p in store.metric_history(run.run_id) if p.name == "loss"]) == 5  # rank 0's, once
        assert run.log_uri is not None
        log = ArtifactStore(workspace.artifact_root).read_bytes(run.log_uri).decode()
        assert "trained on rank 0 of 2" in log and "trained on rank 1 of 2" in log
    # DDP averages the two half-batch gradients: the same weights as one worker on the full batch
    single = load_project(write(tmp_path / "single", make_project, spec(1)))
    assert apply_project(single).result.ok
    ddp_weights, single_weights = weights(distributed), weights(single)
    assert set(ddp_weights) == {"weight", "bias"}
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, atol=1e-5, rtol=1e-5)
    with opened(single) as (_, store):
        version = store.get_model_version("logreg", 1)
        assert version is not None and version.metrics["world_size"] == 1.0 and "rank_sum" not in version.metrics


def test_a_failing_rank_fails_the_node_and_a_timeout_frees_the_workers(tmp_path: Path, make_project: Any) -> None:
    import ray

    body = spec(2, fail_rank=1)
    body["models"]["slow"] = {**body["models"]["logreg"], "params": {"sleep": 600}, "timeout": "25s"}
    project = load_project(write(tmp_path, make_project, body))
    outcome = apply_project(project)  # the two trials take turns on the 2 CPUs, in either order
    failed = outcome.result.outcomes["models.logreg/train"]
    assert failed.status == "failed" and "rank 1: RuntimeError: boom on rank 1" in failed.message
    slow = outcome.result.outcomes["models.slow/train"]
    assert slow.status == "failed" and "timed out" in slow.message
    with opened(project) as (workspace, store):
        (run,) = store.list_runs("models.logreg")
        assert run.status == "failed" and run.log_uri is not None
        assert "boom on rank 1" in ArtifactStore(workspace.artifact_root).read_bytes(run.log_uri).decode()
        assert store.model_versions("logreg") == [] and store.model_versions("slow") == []
    # the cancelled run's placement group is gone: its workers' CPUs are free again
    def freed() -> bool:
        groups = ray.util.placement_group_table().values()
        return all(pg["state"] == "REMOVED" for pg in groups) and ray.available_resources().get("CPU") == 2

    deadline = time.time() + 30  # cancel interrupts at once and force-kills after 15 s
    while not freed() and time.time() < deadline:
        time.sleep(0.2)
    assert freed(), ray.util.placement_group_table()
