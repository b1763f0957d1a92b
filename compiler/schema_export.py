"""Generate ``schemas/mlops.schema.json`` and ``schemas/policy-pack.schema.json`` from the pydantic models.

Run ``python -m compiler.schema_export`` after changing ``compiler/spec.py``; a test fails while they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compiler.spec import PolicyPack, Spec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "mlops.schema.json": (Spec, "mlops.yaml: the declarative spec of an ML project"),
    "policy-pack.schema.json": (PolicyPack, "An mlops policy pack (policies/*.yaml)"),
}


def _close_maps(node: Any) -> None:
    """Named-resource maps only allow names that match their pattern."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_maps(value)


def json_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    """The draft 2020-12 JSON Schema of ``model`` (by alias, as users write it)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    _close_maps(schema)
    return {"$schema": DRAFT, "$id": f"https://mlops.dev/schemas/{model.__name__}", "title": title,
            **{k: v for k, v in schema.items() if k != "title"}}


def render(name: str) -> str:
    model, title = SCHEMAS[name]
    return json.dumps(json_schema(model, title), indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SCHEMAS:
        path = directory / name
        path.write_text(render(name))
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(written)
