"""Processes of this machine, as the lock holders and the warm driver record them."""

from __future__ import annotations

import contextlib
import os
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
