"""A wheel of mlops carries what an installed ``mlops`` needs outside its Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_policy_pack_and_the_starter_templates(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mlops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packs = {p.name for p in (ROOT / "policies").glob("*.yaml")}
    assert packs and {n.rsplit("/", 1)[1] for n in names if "/data/share/mlops/policies/" in n} == packs
    templates = {p.name for p in (ROOT / "compiler" / "starter_files").iterdir()}
    assert templates <= {n.rsplit("/", 1)[1] for n in names if n.startswith("compiler/starter_files/")}
