"""The RunContext a user callable receives: seeding makes python, numpy and torch draws repeat."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from runtime.context import RunContext


def draws(ctx: RunContext) -> tuple[float, float, list[float]]:
    ctx.seed_everything()
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_the_same_seed_repeats_every_generator_and_another_seed_does_not(tmp_path: Path) -> None:
    first = draws(RunContext(inputs={}, output_dir=tmp_path, seed=7))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    again = draws(RunContext(inputs={}, output_dir=tmp_path, seed=7))
    other = draws(RunContext(inputs={}, output_dir=tmp_path, seed=8))
    assert first == again
    assert first[0] != other[0] and first[1] != other[1] and first[2] != other[2]
