"""The HTTP contract of a realtime deployment: what a request must be, and the errors a client can act on.

A deployment at route ``R`` answers:

- ``POST R`` with ``Content-Type: application/json`` and the body ``{"instances": [{column: value, ...}, ...]}``:
  ``200 {"predictions": [...], "ids": [...], "version": N}``;
- ``GET R/openapi.json``: the deployment's OpenAPI 3.1 document (its input signature, limits and errors).

Every other answer is an RFC 9457 problem-details document (``application/problem+json``) with ``type``,
``title``, ``status``, ``detail`` and the request's ``request_id`` (also the ``X-Request-Id`` header):

===== ================================================================================================
400   the body is not JSON (RFC 8259: no ``NaN``/``Infinity``, no number out of range, UTF-8), or not an object
401   the deployment checks a bearer token and the request has none or a wrong one
404   a path under the route other than the two above
405   a method other than POST (GET/HEAD for the document)
413   the body is over ``limits.max_body_bytes``, or ``instances`` over ``limits.max_instances``
415   the body is not declared as JSON
422   ``instances`` missing, empty or not an array, or rows that do not match the input signature: each
      missing, unexpected or mistyped column named in ``errors`` (``{"instance", "column", "problem"}``);
      or a prediction that is not a finite number
500   the model's own code failed: the ``request_id`` finds the traceback with ``mlops logs deployments.NAME``
===== ================================================================================================

This module is plain Python (no Ray), so the whole contract is tested without a cluster; the replica in
:mod:`runtime.compute.serving` calls :func:`read_request` and :func:`problem_response`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

from runtime.endpoint.signature import json_schema, json_type_of, row_problems

PROBLEM_TYPE = "https://mlops.dev/problems/"
"""Problem ``type`` URIs are this prefix plus a slug (``invalid-json``, ``signature-mismatch``, ...)."""
JSON_TYPES = ("application/json",)
MAX_DEPTH_MESSAGE = "the JSON is nested too deeply"
DOCUMENT_PATH = "/openapi.json"


@dataclass(frozen=True)
class ApiConfig:
    """What a replica checks requests against (picklable; part of the replica's spec)."""

    deployment: str
    route: str
    version: int
    columns: dict[str, str] | None = None
    """The input signature (column -> type); ``None``: rows are objects of scalars, not checked further."""
    signature_source: str = ""
    max_body_bytes: int = 1 << 20
    max_instances: int = 1000
    token_hashes: tuple[str, ...] = ()
    """sha256 hex of each accepted bearer token; empty: no token is asked for."""
    pii_columns: tuple[str, ...] = field(default_factory=tuple)
    """Columns dropped before a row is logged."""
    max_logged_row_bytes: int = 4096


class Problem(Exception):
    """A request the deployment refuses: its status, a slug for its ``type``, a title and the detail."""

    def __init__(self, status: int, slug: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail, self.extra = status, slug, title, detail, extra

    def body(self, request_id: str) -> dict[str, Any]:
        return {"type": PROBLEM_TYPE + self.slug, "title": self.title, "status": self.status, "detail": self.detail,
                "request_id": request_id, **self.extra}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sub_path(path: str, root_path: str) -> str:
    """The request's path below the deployment's route (``""`` for the route itself)."""
    below = path[len(root_path):] if root_path and path.startswith(root_path) else path
    return "" if below in ("", "/") else below


def check_route(method: str, below: str) -> str:
    """``predict`` or ``document`` for a request's method and path below the route; else a 404 / 405 problem."""
    if below == DOCUMENT_PATH:
        if method not in ("GET", "HEAD"):
            raise Problem(405, "method-not-allowed", "Method not allowed", f"{method} is not allowed here; use GET",
                          allow="GET, HEAD")
        return "document"
    if below != "":
        raise Problem(404, "not-found", "Not found", f"no such path: {below} (POST to the route itself, or GET "
                      f"{DOCUMENT_PATH.lstrip('/')})")
    if method != "POST":
        raise Problem(405, "method-not-allowed", "Method not allowed",
                      f"{method} is not allowed here; POST a JSON body {{\"instances\": [...]}}", allow="POST")
    return "predict"


def check_token(config: ApiConfig, authorization: str | None) -> None:
    """401 unless the deployment asks for no token or ``Authorization: Bearer <token>`` carries an accepted one."""
    if not config.token_hashes:
        return
    scheme, _, token = (authorization or "").partition(" ")
    presented = token_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
    if not any(hmac.compare_digest(presented, accepted) for accepted in config.token_hashes):
        raise Problem(401, "unauthorized", "Unauthorized",
                      "this deployment needs a bearer token: send `Authorization: Bearer <token>`"
                      if not presented else "the bearer token is not accepted")


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        shown = media or "none"
        raise Problem(415, "unsupported-media-type", "Unsupported media type",
                      f"the body must be JSON (Content-Type: application/json), not {shown}")


def check_declared_length(config: ApiConfig, content_length: str | None) -> None:
    if content_length is None:
        return
    try:
        length = int(content_length)
    except ValueError:
        raise Problem(400, "invalid-request", "Bad request", "Content-Length is not a number") from None
    if length > config.max_body_bytes:
        raise too_large(config)


def too_large(config: ApiConfig) -> Problem:
    return Problem(413, "body-too-large", "Request body too large",
                   f"the body is over this deployment's limit of {config.max_body_bytes} bytes "
                   "(limits.max_body_bytes)", limit_bytes=config.max_body_bytes)


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def strict_json(body: bytes) -> Any:
    """The JSON value of ``body`` by RFC 8259 (UTF-8; no NaN, Infinity or overflowing numbers); else a 400."""
    if not body.strip():
        raise Problem(400, "invalid-json", "Body is not JSON", "the body is empty; send {\"instances\": [...]}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Problem(400, "invalid-json", "Body is not JSON",
                      f"the body is not UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_not_json_constant, parse_float=_finite)
    except json.JSONDecodeError as error:
        raise Problem(400, "invalid-json", "Body is not JSON",
                      f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise Problem(400, "invalid-json", "Body is not JSON", MAX_DEPTH_MESSAGE) from None
    except ValueError as error:  # NaN, Infinity, 1e999, an integer of too many digits
        raise Problem(400, "invalid-json", "Body is not JSON", str(error)) from None


def rows_of(config: ApiConfig, value: Any) -> list[dict[str, Any]]:
    """The rows of a parsed body ``{"instances": [...]}``, checked against the signature; else 400/413/422."""
    if not isinstance(value, dict):
        raise Problem(400, "not-an-object", "Body is not a JSON object",
                      "the body must be a JSON object: {\"instances\": [{...}, ...]}")
    unexpected = sorted(k for k in value if k != "instances")
    if "instances" not in value or unexpected:
        detail = ("the body must have `instances`, an array of rows" if "instances" not in value
                  else f"unexpected member {unexpected[0]!r}: the body has only `instances`")
        raise Problem(422, "invalid-body", "Invalid body", detail)
    instances = value["instances"]
    if not isinstance(instances, list) or not instances:
        raise Problem(422, "invalid-body", "Invalid body", "`instances` must be a non-empty array of rows")
    if len(instances) > config.max_instances:
        raise Problem(413, "too-many-instances", "Too many instances",
                      f"{len(instances)} instances is over this deployment's limit of {config.max_instances} "
                      "(limits.max_instances)", limit_instances=config.max_instances)
    errors: list[dict[str, Any]] = []
    for index, row in enumerate(instances):
        if config.columns is not None:
            errors.extend(row_problems(index, row, config.columns))
        else:
            errors.extend(_scalar_problems(index, row))
        if len(errors) >= 100:
            break
    if errors:
        first = errors[0]
        where = f"instance {first['instance']}" + (f", column {first['column']!r}" if first["column"] else "")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Problem(422, "signature-mismatch", "Rows do not match the input signature",
                      f"{where}: {first['problem']}{more}", errors=errors[:100])
    return instances


def _scalar_problems(index: int, row: Any) -> list[dict[str, Any]]:
    """Without a signature a row must still be an object of scalars."""
    if not isinstance(row, dict):
        return [{"instance": index, "column": None, "problem": f"expected an object, got {json_type_of(row)}"}]
    return [{"instance": index, "column": name, "problem": "expected a number, string or boolean"}
            for name, cell in row.items() if isinstance(cell, dict | list)]


def answer(predictions: list[Any], ids: list[str], version: int) -> bytes:
    """The 200 body, strict JSON; a prediction that is not a finite number is a 422 naming its instance."""
    for index, value in enumerate(predictions):
        if isinstance(value, float) and not math.isfinite(value):
            raise Problem(422, "non-finite-prediction", "Prediction is not a number",
                          f"instance {index}: the model's prediction is {value}, not a JSON number; check that its "
                          "inputs are within the ranges the model was trained on", instance=index)
    return json.dumps({"predictions": predictions, "ids": ids, "version": version}, allow_nan=False,
                      separators=(",", ":")).encode()


def logged_inputs(config: ApiConfig, row: dict[str, Any]) -> dict[str, Any] | None:
    """What of a row goes into the inference log: the signature's columns (any scalar column without one) less
    the PII columns; ``None`` when that is over ``max_logged_row_bytes``."""
    if "*" in config.pii_columns:  # the whole training data is personal: no input is logged
        return {}
    kept = {k: v for k, v in row.items()
            if (config.columns is None or k in config.columns) and k not in config.pii_columns
            and not isinstance(v, dict | list)}
    size = len(json.dumps(kept, separators=(",", ":"), default=str))
    return kept if size <= config.max_logged_row_bytes else None


def openapi_document(config: ApiConfig) -> dict[str, Any]:
    """The deployment's OpenAPI 3.1 document."""
    row = json_schema(config.columns) if config.columns is not None else {
        "type": "object", "additionalProperties": {"type": ["number", "string", "boolean"]}}
    request = {"type": "object", "additionalProperties": False, "required": ["instances"],
               "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": config.max_instances,
                                            "items": row}}}
    problem = {"$ref": "#/components/schemas/Problem"}
    errors = {str(status): {"description": why, "content": {"application/problem+json": {"schema": problem}}}
              for status, why in ((400, "Not JSON, or not an object"), (401, "No or wrong bearer token"),
                                  (405, "Method not allowed"), (413, "Body or instances over the limits"),
                                  (415, "Not JSON"), (422, "Rows do not match the input signature"),
                                  (500, "The model's code failed; request_id finds it in the deployment's log"))
              if status != 401 or config.token_hashes}
    predict: dict[str, Any] = {
        "operationId": "predict", "summary": f"Predictions of deployments.{config.deployment}",
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "One prediction per instance", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Predictions"}}}}, **errors}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"deployments.{config.deployment}", "version": str(config.version),
                 "description": f"Model version {config.version}; input signature from "
                                f"{config.signature_source or 'nowhere (rows are objects of scalars)'}. "
                                f"At most {config.max_body_bytes} bytes and {config.max_instances} instances."},
        "paths": {config.route: {"post": predict}},
        "components": {"schemas": {
            "Predictions": {"type": "object", "required": ["predictions", "ids", "version"], "properties": {
                "predictions": {"type": "array"}, "ids": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "integer"}}},
            "Problem": {"type": "object", "required": ["type", "title", "status", "detail", "request_id"],
                        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                       "status": {"type": "integer"}, "detail": {"type": "string"},
                                       "request_id": {"type": "string"}, "errors": {"type": "array"}}}}},
    }
    if config.token_hashes:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
