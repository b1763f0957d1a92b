"""Processes of this machine, as the lock holders and the warm driver record them."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def importing_mlops(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with this mlops' packages first on ``PYTHONPATH``: for a ``python -m runtime...`` child that must
    run this code, whatever the child's folder or an installed copy."""
    package = str(Path(__file__).resolve().parents[1])
    return {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [package, environ.get("PYTHONPATH")]))}


def folder_prefix(prefix: str) -> str:
    """The name a temp folder of this process starts with, ``PREFIX<pid>-``: once the process is gone, any
    other can tell that the folder is orphaned (:func:`sweep_orphaned_folders_once`)."""
    return f"{prefix}{os.getpid()}-"


_SWEPT: set[tuple[Path, str]] = set()


def sweep_orphaned_folders_once(root: Path, prefix: str) -> None:
    """Remove the folders ``PREFIX<pid>-...`` in ``root`` whose process is gone: one killed (a cancelled task, a
    stopped cluster) cannot remove its own. Done the first time this process asks only: a process killed is
    replaced by a new one, whose first ask finds its folders; the asks after it cost nothing. A folder whose pid
    lives again (reused) is left until that process is gone in turn."""
    if (root, prefix) in _SWEPT:
        return
    _SWEPT.add((root, prefix))
    for folder in root.glob(f"{prefix}*-*"):
        pid = folder.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
