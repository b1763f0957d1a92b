"""What a realtime deployment's endpoint checks, built from the spec, the model version and the environment.

- the **input signature**: the deployment's ``columns`` when the spec declares them, else the signature
  recorded with the model version (:mod:`runtime.endpoint.signature`);
- the **limits**: ``limits.max_body_bytes`` and ``limits.max_instances``;
- the **tokens** of ``auth``: read here, by the apply, from the environment variable or the file the spec
  names (several: comma-separated, or one a line) and handed to the replicas as sha256 hashes only;
- the **PII columns** left out of the inference log: those the model's training datasets and their upstream
  datasets declare (``pii: true`` leaves every input out).
"""

from __future__ import annotations

import os
from pathlib import Path

from compiler.resolve import Project
from compiler.spec import Auth
from runtime.endpoint.contract import ApiConfig, token_hash
from runtime.endpoint.signature import Signature
from runtime.errors import DeployError
from runtime.state.records import ModelVersion

ALL_COLUMNS = "*"
"""A ``pii_columns`` entry meaning every column is personal data."""


def api_config(project: Project, name: str, version: ModelVersion) -> ApiConfig:
    """The contract deployment ``name`` serves ``version`` under; a one-line :class:`MlopsError` when its
    tokens cannot be read."""
    deployment = project.spec.deployments[name]
    if deployment.columns is not None:
        signature: Signature | None = Signature(dict(deployment.columns), "spec")
    else:
        signature = Signature.from_record(version.signature)
    limits = deployment.limits
    return ApiConfig(
        deployment=name, route=deployment.route or f"/{name}", version=version.version,
        columns=signature.columns if signature else None, signature_source=signature.source if signature else "",
        max_body_bytes=limits.max_body_bytes, max_instances=limits.max_instances,
        token_hashes=tuple(token_hash(t) for t in tokens(project, name, deployment.auth)),
        pii_columns=pii_columns(project, deployment.model), max_logged_row_bytes=limits.max_logged_row_bytes)


def tokens(project: Project, name: str, auth: Auth | None) -> list[str]:
    """The bearer tokens deployment ``name`` accepts (none without ``auth``)."""
    if auth is None:
        return []
    where = project.position(f"deployments.{name}", "auth")
    if auth.token_env is not None:
        raw = os.environ.get(auth.token_env, "")
        found = [t.strip() for t in raw.split(",") if t.strip()]
        if not found:
            raise DeployError.one(f"deployments.{name}: auth.token_env {auth.token_env} is not set or empty in the "
                                 "environment of this apply; set it to the token callers send", where)
        return found
    assert auth.token_file is not None
    path = Path(auth.token_file)
    path = path if path.is_absolute() else project.spec_path.parent / path
    try:
        found = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DeployError.one(f"deployments.{name}: auth.token_file {path} cannot be read: "
                             f"{getattr(error, 'strerror', None) or error}", where) from None
    if not found:
        raise DeployError.one(f"deployments.{name}: auth.token_file {path} holds no token", where)
    return found


def pii_columns(project: Project, model: str) -> tuple[str, ...]:
    """The columns declared personal by the model's training datasets and everything upstream of them."""
    spec = project.spec
    names: dict[str, None] = {}
    for dataset in spec.models[model].data.values():
        names[dataset] = None
        names.update(dict.fromkeys(project.upstream.get(dataset, [])))
    columns: dict[str, None] = {}
    for dataset in names:
        pii = spec.datasets[dataset].pii if dataset in spec.datasets else False
        if pii is True:
            return (ALL_COLUMNS,)
        if isinstance(pii, list):
            columns.update(dict.fromkeys(pii))
    return tuple(columns)
