"""Where the warm driver of a state directory is: its record file, its socket, and whether it suits a caller."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime import processes

ENV_PREFIXES = ("MLOPS_", "AWS_", "PG", "RAY_", "GOOGLE_", "CUDA_", "PYTHON")
"""Variables that change what a command does or where it reaches: a driver started under other values than
the caller's is replaced, never reused."""
IGNORED_ENV = {"MLOPS_IDLE_STOP", "MLOPS_IN_DAEMON", "PYTHONUNBUFFERED",
               # set by mlops once it has joined a cluster (runtime.compute.cluster, ray_backend), and by Ray itself
               # when imported or joined (callers pass their environment as it started: these are a second guard)
               "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_DEDUP_LOGS", "RAY_CLIENT_MODE",
               "PYTHONBREAKPOINT"}
DEFAULT_IDLE_S = 15 * 60.0
READY_LINE = "mlops warm driver ready"
"""What the driver logs once it accepts commands (the one who started it waits for it)."""
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class DaemonRecord:
    """A running warm driver, as it recorded itself once ready."""

    pid: int
    socket: str
    started_at: float
    idle_s: float
    fingerprint: str
    cluster_address: str


def record_path(state_path: Path) -> Path:
    return state_path.parent / "daemon.json"


def log_path(state_path: Path) -> Path:
    return state_path.parent / "daemon.log"


def socket_path(state_path: Path) -> Path:
    """A short path (Unix socket paths are limited to ~100 bytes) in a folder only this user can enter."""
    private = Path(tempfile.gettempdir()) / f"mlops-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    digest = hashlib.sha256(str(state_path.resolve()).encode()).hexdigest()[:20]
    return private / f"{digest}.sock"


def idle_seconds(text: str | None = None) -> float | None:
    """``MLOPS_IDLE_STOP`` (``30s``, ``15m``, ``2h``; ``off``/``0``: no warm driver): seconds, or ``None`` when
    off. Raises ``ValueError`` naming the variable for anything else."""
    text = os.environ.get("MLOPS_IDLE_STOP", "") if text is None else text
    if not text.strip():
        return DEFAULT_IDLE_S
    if text.strip().lower() in ("off", "0", "no", "false"):
        return None
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"MLOPS_IDLE_STOP={text!r} is not a duration (use 30s, 15m, 2h, or off)")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def fingerprint(environ: dict[str, str] | None = None) -> str:
    """What a driver must share with a caller to run its commands: this Python, the mlops code (each module's
    size and modification time) and the variables of :data:`ENV_PREFIXES`."""
    environ = dict(os.environ if environ is None else environ)
    package = Path(__file__).resolve().parents[2]
    code = sorted((str(p.relative_to(package)), p.stat().st_mtime_ns, p.stat().st_size)
                  for folder in ("runtime", "compiler") for p in (package / folder).rglob("*.py"))
    env = sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIXES) and k not in IGNORED_ENV)
    what = json.dumps([sys.executable, code, env])
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def read(state_path: Path) -> DaemonRecord | None:
    """The recorded driver if its process is alive (a record left by a dead one is removed)."""
    path = record_path(state_path)
    try:
        record = DaemonRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    if not processes.alive(record.pid):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    return record


def write(state_path: Path, record: DaemonRecord) -> None:
    path = record_path(state_path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def remove(state_path: Path, pid: int) -> None:
    """Forget the record if it is still ``pid``'s."""
    path = record_path(state_path)
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, TypeError, KeyError):
        if json.loads(path.read_text())["pid"] == pid:
            path.unlink()
