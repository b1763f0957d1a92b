"""How the views' values are shown: times, durations, hashes, metric values (shared by the commands)."""

from __future__ import annotations

import json
import time
from typing import Any


def digest(value: str) -> str:
    """The hex digest in a content hash or an artifact URI (what follows the last ``:``)."""
    return value.rsplit(":", 1)[-1]


def when(seconds: float | None) -> str:
    """A POSIX time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    return "-" if not seconds else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def took(seconds: float | None) -> str:
    """``14ms``, ``0.4s``, ``12.0s``, ``3m05s``, ``1h02m`` (``-`` for none): a run of a few milliseconds
    (an evaluation on a warm worker) is not shown as ``0.0s``."""
    if seconds is None:
        return "-"
    if seconds < 0.095:  # would show as 0.0s or 0.1s
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def short(value: str | None, length: int = 12) -> str:
    """The first ``length`` characters of a hash (after any ``sha256:`` style prefix); ``-`` for none."""
    return "-" if not value else digest(value)[:length]


def number(value: Any) -> str:
    """A metric or param value, compactly (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)


def key_metrics(metrics: dict[str, float], most: int = 3) -> str:
    """``auc=0.9042 loss=0.3333`` (the first ``most`` by name, then ``+N``)."""
    names = sorted(metrics)
    text = " ".join(f"{name}={number(metrics[name])}" for name in names[:most])
    return text + (f" +{len(names) - most}" if len(names) > most else "") if text else "-"
