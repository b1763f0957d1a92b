"""The Terraform a project needs, as plain data: a :class:`Blueprint` of providers, variables, locals,
``resource``/``data`` blocks and outputs. Building one never starts Node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MANAGED_BY = "mlops"

Kind = Literal["resource", "data"]


@dataclass
class Block:
    """A ``resource`` or ``data`` block ``TYPE.NAME``; ``body`` is in Terraform JSON syntax."""

    kind: Kind
    type: str
    name: str
    body: dict[str, Any]


@dataclass
class Blueprint:
    """The whole stack as plain data; :func:`render` turns it into Terraform JSON through cdktf."""

    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, kind: Kind, type_: str, name: str, body: dict[str, Any]) -> None:
        self.blocks.append(Block(kind, type_, name, body))

    def variable(self, name: str, type_: str, description: str, default: Any = ...) -> str:
        """Declare ``var.NAME`` (no ``default`` = required) and return a reference to it."""
        self.variables[name] = {"type": type_, "description": description}
        if default is not ...:
            self.variables[name]["default"] = default
        return f"${{var.{name}}}"

    def output(self, name: str, value: str, description: str) -> None:
        self.outputs[name] = {"value": value, "description": description}
