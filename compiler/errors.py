"""One error root for the compiler, a subclass per stage, and the positioned diagnostic they carry.

Every user-facing problem is a :class:`Diagnostic`: ``file:line:col: severity: address: message``.
Stages raise an :class:`MlopsError` holding one or more diagnostics; the CLI prints them one per line
and exits 1, never with a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


_ESCAPED_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
"""Line breaks inside a message (a key that holds one, say) are shown escaped: a diagnostic stays one line."""


@dataclass(frozen=True)
class Position:
    """A place in a source file; ``line`` and ``column`` are 1-based.

    ``end_line`` and ``end_column``, when the loader knows them, say where the node that starts here ends:
    ``end_column`` is the column just after its last character (so a one-character node at column 5 ends at
    column 6, as SARIF regions count). They take no part in comparisons: a place is its start.
    """

    file: str
    line: int
    column: int
    end_line: int | None = field(default=None, compare=False)
    end_column: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """A positioned message about a resource (``address`` may be empty for file-level problems)."""

    message: str
    position: Position | None = None
    address: str = ""
    severity: Severity = "error"

    def render(self) -> str:
        """The one-line form: ``mlops.yaml:14:7: error: models.churn: message``."""
        where = f"{self.position}: " if self.position else ""
        what = f"{self.address}: " if self.address else ""
        return f"{where}{self.severity}: {what}{self.message}".translate(_ESCAPED_BREAKS)

    def to_json(self) -> dict[str, object]:
        """A machine-readable form for ``--json`` output."""
        return {
            "severity": self.severity,
            "message": self.message,
            "address": self.address or None,
            "file": self.position.file if self.position else None,
            "line": self.position.line if self.position else None,
            "column": self.position.column if self.position else None,
        }


@dataclass
class MlopsError(Exception):
    """Root of every user error the tool reports; holds one or more diagnostics."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.render())

    @classmethod
    def one(cls, message: str, position: Position | None = None, address: str = "") -> MlopsError:
        """An error holding a single diagnostic."""
        return cls([Diagnostic(message, position, address)])

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


class LoadError(MlopsError):
    """The file could not be read as one safe YAML mapping."""


class SpecError(MlopsError):
    """The document does not match the spec's schema."""


class ResolveError(MlopsError):
    """A reference, a path or the graph's shape is wrong."""


class PolicyPackError(MlopsError):
    """A policy pack is malformed."""


class TerraformError(MlopsError):
    """Terraform synthesis failed."""
