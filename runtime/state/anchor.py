"""The state's identity and where it is anchored: lineage, serial and the ``<state file>.audit-head`` sidecar.

Like Terraform's ``lineage`` and ``serial``: a state gets a random ``lineage`` when it is created and a
``serial`` that grows with every write transaction (``state_meta`` in the database). The audit-head
sidecar next to the database anchors, besides the audit log's head (record count and last hash), the
lineage and serial of the state at that head. A state is refused (:func:`refusal`) before any write
when it cannot be the one its sidecar anchors:

* **empty**: the database file is missing or empty (``: > state.db``) while the sidecar names records;
* **replaced**: its lineage is not the sidecar's (another state copied over it);
* **older**: it has fewer audit records, or a lower serial, than the sidecar (an old backup restored).

The recovery is to restore the right file, or ``mlops state reset --i-understand``, which keeps the
old sidecar as evidence, records a ``state-reset`` audit record naming the history it left, and
anchors the state as it is now (:func:`runtime.state.audit.reset`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RECOVERY = "mlops state reset --i-understand"


@dataclass(frozen=True)
class Anchor:
    """What the sidecar says: the audit head, and the lineage and serial of the state at that head."""

    count: int
    hash: str
    lineage: str | None = None
    """``None`` in a sidecar written before states had a lineage."""
    serial: int | None = None


def sidecar_path(state_path: Path | str) -> Path:
    """``<state file>.audit-head``."""
    path = Path(state_path)
    return path.with_name(path.name + ".audit-head")


def read(path: Path) -> Anchor | str | None:
    """The sidecar at ``path``; an error message when unreadable; ``None`` when missing."""
    try:
        data = json.loads(path.read_text())
        lineage = data.get("lineage")
        serial = data.get("serial")
        return Anchor(int(data["count"]), str(data["hash"]), None if lineage is None else str(lineage),
                      None if serial is None else int(serial))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return str(exc)


def _refused(state_path: Path, why: str) -> str:
    return (f"state {state_path} is refused: {why}; restore {state_path.name} from a backup, or run "
            f"`{RECOVERY}` to accept it as it is (the old history stays in the audit trail)")


def _named(anchor: Anchor) -> str:
    lineage = f", lineage {anchor.lineage[:12]}" if anchor.lineage else ""
    serial = f", serial {anchor.serial}" if anchor.serial is not None else ""
    return f"{anchor.count} audit records{lineage}{serial}"


def refusal_before_open(state_path: Path) -> str | None:
    """Why the state file cannot be opened for its history: missing or empty while its sidecar names records."""
    anchor = read(sidecar_path(state_path))
    if not isinstance(anchor, Anchor) or anchor.count == 0:
        return None
    try:
        size = state_path.stat().st_size
    except FileNotFoundError:
        return _refused(state_path, f"it is missing, but {sidecar_path(state_path).name} says its history has "
                                    f"{_named(anchor)}")
    if size == 0:
        return _refused(state_path, f"it is empty, but {sidecar_path(state_path).name} says its history has "
                                    f"{_named(anchor)}")
    return None


def refusal(state_path: Path, anchor: Anchor | str | None, lineage: str, serial: int, count: int) -> str | None:
    """Why an open state (its ``lineage``, ``serial`` and audit record ``count``) is not the one ``anchor`` names.

    Read ``anchor`` *before* the state: the sidecar is written only after the state it names committed, so a
    state read afterwards is never older than it, even while another process appends.
    """
    if not isinstance(anchor, Anchor):
        return None
    side = sidecar_path(state_path).name
    if anchor.lineage is not None and anchor.lineage != lineage:
        if count == 0 and serial <= 1:
            return _refused(state_path, f"it is a new, empty state (lineage {lineage[:12]}), but {side} says its "
                                        f"history has {_named(anchor)}")
        return _refused(state_path, f"it is another state (lineage {lineage[:12]}, {count} audit records) than the "
                                    f"one {side} anchors ({_named(anchor)}): it was replaced")
    if anchor.count > count or (anchor.serial is not None and anchor.serial > serial):
        return _refused(state_path, f"it is older than its audit head: it has {count} audit records and serial "
                                    f"{serial}, {side} says {_named(anchor)}")
    return None
