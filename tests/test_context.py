"""The RunContext a user callable receives: seeding makes python, numpy and torch draws repeat."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from runtime.context import RunContext

ROOT = Path(__file__).resolve().parents[1]


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


IMPORTED_AFTER_SEEDING = '''
import sys
from pathlib import Path

from runtime.context import RunContext

seed = int(sys.argv[1])
RunContext(inputs={}, output_dir=Path("."), seed=seed).seed_everything()
assert "torch" not in sys.modules and "numpy" not in sys.modules  # seeding imported neither
import numpy
import torch

print(torch.rand(3).tolist(), numpy.random.rand())
'''


def test_torch_and_numpy_imported_after_seeding_are_seeded_on_import(tmp_path: Path) -> None:
    def run(seed: int) -> str:
        return subprocess.run([sys.executable, "-c", IMPORTED_AFTER_SEEDING, str(seed)], capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout

    first, again, other = run(7), run(7), run(8)
    torch.manual_seed(7)
    np.random.seed(7)
    assert first == again == f"{torch.rand(3).tolist()} {np.random.rand()}\n"
    assert other != first
