"""A wheel of mlops carries what an installed ``mlops`` needs outside its Python modules."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "mlops-gitops"
"""The distribution's name: ``mlops`` on the package index is an unrelated project."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("mlops_gitops-*.whl")
    return built


def test_the_wheel_ships_every_policy_pack_and_the_starter_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packs = {p.name for p in (ROOT / "policies").glob("*.yaml")}
    assert packs and {n.rsplit("/", 1)[1] for n in names if "/data/share/mlops/policies/" in n} == packs
    templates = {p.name for p in (ROOT / "compiler" / "starter_files").iterdir()}
    assert templates <= {n.rsplit("/", 1)[1] for n in names if n.startswith("compiler/starter_files/")}


def test_the_distribution_has_a_name_of_its_own_and_installs_the_mlops_command(wheel: Path) -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == DISTRIBUTION
    archive = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/", 1)[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    assert metadata["Name"] == DISTRIBUTION
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "[console_scripts]\nmlops = runtime.cli.main:entry" in entry_points
    top_level = {n.split("/", 1)[0] for n in archive.namelist() if n.endswith(".py")}
    assert top_level == {"compiler", "runtime"}
