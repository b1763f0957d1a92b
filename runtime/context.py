"""The one object a user's callable receives: inputs, output directory, params, seed, device, metrics.

Signatures of the callables named in ``mlops.yaml``::

    def build_features(ctx: RunContext) -> None          # a transform: writes files into ctx.output_dir
    def train(ctx: RunContext) -> TrainResult            # a trainer: a model artifact and its metrics
    def evaluate(ctx: RunContext) -> dict[str, float]    # an evaluator: metrics of ctx.model_path

``ctx.inputs`` maps each input to the path of its data: for a transform the names in ``from``,
for a trainer or evaluator the roles in ``data`` (``train``, ``eval``, ...).

A model with ``resources.workers: N > 1`` trains through Ray Train: ``train(ctx)`` runs on N
workers at once, each with ``ctx.rank`` (0 .. N-1) and ``ctx.world_size`` (N) set and
``torch.distributed`` initialised (gloo on CPU, nccl on GPU) and the same seed. Wrap the model with
``ray.train.torch.prepare_model`` (DDP) and shard the data by rank; only rank 0's returned
``TrainResult`` and its ``ctx.log_metric`` values are kept. A trainer written like this also runs
with ``workers: 1`` when it only does the distributed parts under ``if ctx.world_size > 1:``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What a trainer returns: ``model`` is a torch ``state_dict`` (saved with safetensors-safe
    ``torch.save``) or the path of a file the trainer wrote into ``ctx.output_dir``."""

    model: Any
    metrics: dict[str, float] = field(default_factory=dict)
    signature: list[str] | dict[str, str] | None = None
    """The input columns the model takes: their names (typed from the training data) or name -> type
    (``int``, ``float``, ``string``, ``bool``, ``category``, ``datetime``). Default: the training dataset's
    declared ``schema``, else the columns of its CSV (:mod:`runtime.endpoint.signature`)."""


@dataclass
class RunContext:
    """Everything a user callable needs, and the one place it reports metrics."""

    inputs: dict[str, Path]
    output_dir: Path
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    model_path: Path | None = None
    """For an evaluator: the trained model's artifact."""
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("mlops.run"))
    world_size: int = 1
    """How many workers run this trainer at once (``resources.workers``); 1 outside distributed training."""
    rank: int = 0
    """This worker's rank, 0 .. ``world_size - 1``; rank 0's result and metrics are the ones kept."""

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record one value of a metric; ``step`` defaults to the next step of that metric."""
        series = self.metrics.setdefault(name, [])
        series.append((len(series) if step is None else step, float(value)))

    def input(self, name: str) -> Path:
        """The path of one input, with a clear error when it is not declared."""
        try:
            return self.inputs[name]
        except KeyError:
            raise KeyError(f"no input '{name}'; declared inputs: {sorted(self.inputs)}") from None

    def seed_everything(self) -> None:
        """Seed python, numpy and torch from ``seed``.

        numpy and torch are seeded at once when this process has imported them, else the moment the
        user's code imports them (:class:`_SeedOnImport`): code that never uses torch does not pay its
        import (about 2 s per worker process).
        """
        random.seed(self.seed)
        for name, seeder in _SeedOnImport.SEEDERS.items():
            module = sys.modules.get(name)
            if module is not None:
                seeder(module, self.seed)
            else:
                _SEED_ON_IMPORT.seeds[name] = self.seed
        if _SEED_ON_IMPORT.seeds and _SEED_ON_IMPORT not in sys.meta_path:
            sys.meta_path.insert(0, _SEED_ON_IMPORT)


def _seed_torch(torch: Any, seed: int) -> None:
    # torch.manual_seed would also queue seeding for every lazily initialised accelerator
    # (recording a stack trace for each, about 1 ms); seed the CPU generator and CUDA when present.
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _seed_numpy(numpy: Any, seed: int) -> None:
    numpy.random.seed(seed)


class _SeedOnImport(importlib.abc.MetaPathFinder):
    """Seeds numpy and torch right after this process first imports them, with the latest run's seed."""

    SEEDERS: dict[str, Callable[[Any, int], None]] = {"numpy": _seed_numpy, "torch": _seed_torch}

    def __init__(self) -> None:
        self.seeds: dict[str, int] = {}
        """Module name -> the seed to give it when it is imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.seeds:
            return None
        seed = self.seeds.pop(fullname)
        if not self.seeds:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:  # the real spec, from the finders after this one
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module
        seeder = self.SEEDERS[fullname]

        def exec_module(module: Any) -> None:
            execute(module)
            seeder(module, seed)

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader object
        return spec


_SEED_ON_IMPORT = _SeedOnImport()
