"""A :class:`Blueprint` -> Terraform JSON through cdktf core (imported here only, lazily).

One construct per block and one ``add_override`` per attribute, so jsii round trips do not grow with
the number of datasets or monitors; values over :data:`SPLICE_BYTES` go around jsii (see
:class:`_Splicer`). State stays local (``terraform.tfstate``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from compiler.errors import TerraformError
from compiler.terraform.model import Blueprint

TERRAFORM_FILE = "cdk.tf.json"
STACK_NAME = "mlops"

PROVIDERS: dict[str, tuple[str, str]] = {
    "aws": ("hashicorp/aws", "6.50.0"),
    "google": ("hashicorp/google", "7.36.0"),
    "kubernetes": ("hashicorp/kubernetes", "2.38.0"),
    "helm": ("hashicorp/helm", "3.1.1"),
}
"""Provider -> (registry source, exact version); only the providers a stack uses are required."""


def _import_cdktf() -> None:
    """Import cdktf, keeping jsii's banner about the Node version off the user's terminal."""
    majors = ",".join(str(major) for major in range(14, 40))
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", majors)
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", majors)
    import cdktf  # noqa: F401


SPLICE_BYTES = 4096
"""Attribute values whose JSON is longer than this go around jsii (see :class:`_Splicer`)."""


class _Splicer:
    """Keeps large attribute values out of jsii and puts them back into cdktf's output.

    jsii marshals a nested value node by node on both sides of its pipe, and cdktf walks it again
    when it synthesizes: about 40 µs a JSON node, 2.5 s for 4,000 alert rules. Blueprint values hold
    no cdktf tokens (references are ``${...}`` strings, which cdktf copies as they are), so a large
    value goes to cdktf as a placeholder and is put back in its place after synthesis; the result
    is the document cdktf itself writes (``tests/test_terraform.py`` checks that).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.values: dict[tuple[str, ...], tuple[str, Any]] = {}

    def __call__(self, path: tuple[str, ...], value: Any) -> Any:
        if self.limit is None or len(json.dumps(value)) <= self.limit:
            return value
        placeholder = f"mlops-splice-{len(self.values)}"
        self.values[path] = (placeholder, value)
        return placeholder

    def apply(self, document: dict[str, Any]) -> None:
        for (*parents, key), (placeholder, value) in self.values.items():
            node = document
            for part in parents:
                node = node[part]
            if node.get(key) != placeholder:
                raise TerraformError.one(f"cdktf wrote no {'.'.join(parents)}.{key} where expected")
            node[key] = value


def render(plan: Blueprint, splice_bytes: int | None = SPLICE_BYTES) -> dict[str, Any]:
    """The Terraform JSON of a blueprint, synthesized by cdktf; ``splice_bytes=None``: all through jsii."""
    _import_cdktf()
    import cdktf

    class Provider(cdktf.TerraformProvider):
        """Any provider by name; cdktf core writes its ``required_providers`` entry."""

    splice = _Splicer(splice_bytes)
    with tempfile.TemporaryDirectory(prefix="mlops-cdktf-") as outdir:
        app = cdktf.App(outdir=outdir, skip_validation=True)
        stack = cdktf.TerraformStack(app, STACK_NAME)
        cdktf.LocalBackend(stack, path="terraform.tfstate")  # relative: no absolute path in the output
        for name, config in sorted(plan.providers.items()):
            source, version = PROVIDERS[name]
            provider = Provider(stack, f"provider_{name}", terraform_resource_type=name,
                                terraform_provider_source=source,
                                terraform_generator_metadata=cdktf.TerraformProviderGeneratorMetadata(
                                    provider_name=name, provider_version=version))
            for key, value in config.items():
                provider.add_override(key, value)
        for name, spec in plan.variables.items():
            variable = cdktf.TerraformVariable(stack, f"var_{name}", type=spec["type"],
                                               description=spec["description"])
            variable.override_logical_id(name)
            if "default" in spec:
                variable.add_override("default", spec["default"])
        for name, value in plan.locals.items():
            cdktf.TerraformLocal(stack, f"local_{name}", splice(("locals", name), value)).override_logical_id(name)
        for block in plan.blocks:
            kind = cdktf.TerraformResource if block.kind == "resource" else cdktf.TerraformDataSource
            element = kind(stack, f"{block.kind}_{block.type}_{block.name}", terraform_resource_type=block.type)
            element.override_logical_id(block.name)
            for key, value in block.body.items():
                element.add_override(key, splice((block.kind, block.type, block.name, key), value))
        for name, output in plan.outputs.items():
            cdktf.TerraformOutput(stack, f"output_{name}", value=output["value"],
                                  description=output["description"]).override_logical_id(name)
        app.synth()
        document: dict[str, Any] = json.loads(
            (Path(outdir) / "stacks" / STACK_NAME / TERRAFORM_FILE).read_text(encoding="utf-8"))
    splice.apply(document)
    return document
