"""Labels fed back for logged predictions (``mlops monitor feedback``): read from a file, stored in the state."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from compiler.errors import MlopsError
from runtime.errors import MonitorError
from runtime.monitor.inference_log import read
from runtime.state.store import StateStore
from runtime.workspace import Workspace


def read_feedback(path: Path) -> list[tuple[str, float]]:
    """Labels from a CSV (a header with ``id`` and ``label``) or a JSONL file (``{"id": .., "label": ..}``).

    A label is a number (``true``/``false`` count as 1/0); a bad line is an :class:`MlopsError` naming it.
    """
    from compiler.errors import Position

    def fail(line: int, message: str) -> MlopsError:
        return MlopsError.one(message, Position(str(path), line, 1))

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MonitorError.one(f"cannot read {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[str, float]] = []
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(number, f"not JSON: {exc.msg}") from None
            if not isinstance(raw, dict) or "id" not in raw or "label" not in raw:
                raise fail(number, 'each line must be an object with "id" and "label"')
            pairs.append((str(raw["id"]), _label(raw["label"], path, number)))
        return pairs
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
        raise fail(1, f"the header must name the columns id and label (got: {', '.join(reader.fieldnames or [])})")
    for row in reader:
        number = reader.line_num
        if not row.get("id"):
            raise fail(number, "empty id")
        pairs.append((row["id"], _label(row["label"], path, number)))
    return pairs


def _label(value: Any, path: Path, line: int) -> float:
    from compiler.errors import Position

    def fail(message: str) -> MlopsError:
        return MlopsError.one(message, Position(str(path), line, 1))

    if isinstance(value, bool) or str(value).strip().lower() in ("true", "false"):
        return float(value is True or str(value).strip().lower() == "true")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise fail(f"label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise fail(f"label {value!r} is not a finite number")
    return number


def store_feedback(workspace: Workspace, store: StateStore, labels: list[tuple[str, float]]) -> tuple[int, int]:
    """Store labels; returns ``(stored, matching a logged prediction of any deployment)``."""
    store.add_feedback(labels)
    wanted = {pid for pid, _ in labels}
    logged: set[str] = set()
    root = Path(workspace.artifact_root) / "inference"
    if "://" not in workspace.artifact_root and root.is_dir():
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            logged.update(r.id for r in read(directory) if r.id in wanted)
    return len(labels), len(logged)
