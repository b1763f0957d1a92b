"""Generic fixtures for the test suite.

``make_project`` writes a small, real project into a directory and returns the spec's path::

    def test_something(tmp_path, make_project):
        spec = make_project(tmp_path, {"apiVersion": "mlops/v1", "project": "demo"},
                            files={"data/raw.csv": "x,y\\n1,2\\n"})
        project = load_project(spec)

The project gets a ``.git`` directory (so the repository root is the directory itself), the spec
as ``mlops.yaml`` and a ``pipeline.py`` whose callables (``pipeline:build_features``,
``pipeline:train``, ``pipeline:evaluate``) follow the signatures of ``runtime/context.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

PIPELINE_SOURCE = '''"""Callables for test projects (signatures of runtime/context.py)."""

from runtime.context import RunContext, TrainResult


def build_features(ctx: RunContext) -> None:
    """Copy every input into the output directory."""
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx: RunContext) -> TrainResult:
    """A constant model with one metric."""
    ctx.log_metric("auc", 0.9)
    return TrainResult(model={"w": ctx.params.get("lr", 0.0)}, metrics={"auc": 0.9})


def evaluate(ctx: RunContext) -> dict[str, float]:
    """A fixed score."""
    return {"auc": 0.9}


def load_predictor(model_path, params):
    """Serving: every row scores the model's ``w``."""
    import torch

    weight = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [weight for _ in rows]
'''
"""The default ``pipeline.py`` a project made by :func:`write_project` gets."""

SpecInput = Mapping[str, Any] | str
FileContent = str | bytes


def write_project(
    root: Path,
    spec: SpecInput,
    files: Mapping[str, FileContent] | None = None,
    *,
    pipeline: str | None = PIPELINE_SOURCE,
    git: bool = True,
    spec_name: str = "mlops.yaml",
) -> Path:
    """Write a project under ``root`` and return the path of its spec.

    ``spec`` is a mapping (dumped as block-style YAML, keys in the given order) or YAML text
    written as is. ``files`` maps paths relative to ``root`` to text or bytes (parents are
    created). ``pipeline`` is the text of ``root/pipeline.py`` (``None``: no such file).
    ``git`` creates ``root/.git`` so that ``root`` is the repository root. ``spec_name`` may hold
    a sub-directory (``"sub/mlops.yaml"``).
    """
    root.mkdir(parents=True, exist_ok=True)
    if git:
        (root / ".git").mkdir(exist_ok=True)
    if pipeline is not None:
        (root / "pipeline.py").write_text(pipeline, encoding="utf-8")
    for relative, content in (files or {}).items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    spec_path = root / spec_name
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    text = spec if isinstance(spec, str) else yaml.safe_dump(dict(spec), sort_keys=False)
    spec_path.write_text(text, encoding="utf-8")
    return spec_path


MakeProject = Callable[..., Path]


@pytest.fixture
def make_project() -> MakeProject:
    """:func:`write_project`: ``make_project(tmp_path, spec, files={...})`` -> the spec's path."""
    return write_project


@pytest.fixture(scope="module", autouse=True)
def serve_port() -> int:
    """A free port for Ray Serve's HTTP proxy, fresh for each test module (``MLOPS_SERVE_PORT``)."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    os.environ["MLOPS_SERVE_PORT"] = str(port)
    return port
