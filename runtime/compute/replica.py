"""One Serve replica of a realtime deployment: what it is constructed with, how it loads a version, how it
answers a request.

A replica is constructed once per deployment (with what no version changes: :meth:`ServeSpec.home`) and
handed each version in its ``user_config``; :meth:`reconfigure` loads the new model beside the old one and
swaps them. A request is checked against :mod:`runtime.endpoint.contract`, answered with the model's
predictions, and a sample of it is appended to the inference log for the monitors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import numbers
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from runtime.compute.scoring import ScoringSpec, load_predictor
from runtime.endpoint.contract import ApiConfig, Problem
from runtime.errors import TaskError

SCRATCH_PREFIX = "mlops-model-"
"""A loaded version's scratch folder: ``mlops-model-<pid of its replica>-<random>``."""
STAGING_NICENESS = 19
"""A staging replica yields the CPU to the live replicas while it starts (it only proves the version loads)."""


@dataclass(frozen=True, kw_only=True)
class ServeSpec(ScoringSpec):
    """Everything a replica needs, picklable: the version to score with and the HTTP contract."""

    api: ApiConfig
    """The HTTP contract: input signature, limits, accepted tokens (:mod:`runtime.endpoint.contract`)."""
    sample_rate: float = 1.0

    def home(self) -> dict[str, str]:
        """What a replica is constructed with: the parts no version changes."""
        return {"deployment": self.deployment, "repo_root": self.repo_root, "artifact_root": self.artifact_root,
                "code_uri": self.code_uri}

    def user_config(self) -> dict[str, Any]:
        """The version-specific rest, as the JSON ``user_config`` Serve hands to :meth:`reconfigure` (a change of
        it alone reloads the model in the running replicas, with no restart)."""
        return {"version": self.version, "model_uri": self.model_uri, "spec": dataclasses.asdict(self)}

    @classmethod
    def from_user_config(cls, config: dict[str, Any]) -> ServeSpec:
        fields = dict(config["spec"])
        api = dict(fields.pop("api"))
        api["token_hashes"] = tuple(api.get("token_hashes") or ())
        api["pii_columns"] = tuple(api.get("pii_columns") or ())
        return cls(**fields, api=ApiConfig(**api))


@dataclass(frozen=True)
class ReplicaResources:
    """What each replica of a deployment reserves on the cluster."""

    cpus: float
    gpus: float = 0.0
    memory_bytes: int | None = None

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options



def bind_replica_grpc_to_node_address() -> None:
    """Make this replica's inter-deployment gRPC server listen on its node's address, not on every interface.

    Ray Serve 2.60 binds it to ``[::]:0`` with no option (``ray/serve/_private/replica.py``); peers reach a
    replica at its node's address, which is 127.0.0.1 on the embedded cluster. Called in the replica's
    constructor, which Serve runs before it starts that server; a Serve without this hook is left as it is.
    """
    import ray
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "mlops_node_address", False):
        return
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def add_port_on_node_address(server: Any, address: str) -> Any:
        return bind(server, address.replace("[::]", host, 1) if address.startswith("[::]:") else address)

    add_port_on_node_address.mlops_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_node_address


def json_value(prediction: Any) -> Any:
    """A prediction as a JSON value: numbers (numpy's too) as floats, arrays and tensors as lists."""
    if isinstance(prediction, bool | str) or prediction is None:
        return prediction
    if isinstance(prediction, numbers.Real):
        return float(prediction)
    if hasattr(prediction, "tolist"):
        return prediction.tolist()
    if isinstance(prediction, list | tuple):
        return [json_value(p) for p in prediction]
    if isinstance(prediction, dict):
        return {str(k): json_value(v) for k, v in prediction.items()}
    raise TypeError(f"a prediction of type {type(prediction).__name__} is not a JSON value")


def serve_request_id() -> str:
    """The id Serve's proxy gave this request (the client's ``X-Request-Id`` when it sent one): the one Serve
    answers in ``X-Request-Id`` too. Empty outside a Serve request."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # noqa: BLE001 - a Serve without it: the replica makes its own
        return ""


def problem_response(problem: Problem, request_id: str) -> Any:
    """The RFC 9457 answer to a refused request."""
    from starlette.responses import Response

    headers = {"X-Request-Id": request_id}
    body = problem.body(request_id)
    if "allow" in body:
        headers["Allow"] = str(body.pop("allow"))
    if problem.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="mlops"'
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=problem.status,
                    media_type="application/problem+json", headers=headers)


@dataclass(frozen=True)
class Loaded:
    """A version as a replica answers with it."""

    spec: ServeSpec
    predictor: Any
    document: bytes
    """The deployment's OpenAPI document for this version, as JSON."""
    scratch: tempfile.TemporaryDirectory[str]
    """Where the artifact is copied when its store is not on this machine. It is removed with this version: once
    no request is answered with it any more (a newer version replaced it), or when the replica stops."""


def load(spec: ServeSpec) -> Loaded:
    """Load ``spec``'s version: its artifact verified against its hash (a one-line refusal naming the object
    otherwise), then the trainer module's ``load_predictor``. A version that fails to load leaves no folder."""
    from pathlib import Path

    from runtime import processes
    from runtime.endpoint.contract import openapi_document

    # Named for this replica's process: a replica stopped without its graceful stop (the cluster stopped, a
    # kill) leaves its folder to the next replica started on the machine, which removes it.
    processes.sweep_orphaned_folders_once(Path(tempfile.gettempdir()), SCRATCH_PREFIX)
    scratch = tempfile.TemporaryDirectory(prefix=processes.folder_prefix(SCRATCH_PREFIX))
    try:
        predictor = load_predictor(spec, Path(scratch.name))
    except BaseException:
        scratch.cleanup()
        raise
    return Loaded(spec, predictor, json.dumps(openapi_document(spec.api), separators=(",", ":")).encode(), scratch)


@functools.cache
def _replica_source_digest() -> str:
    """sha256 of the modules a replica runs (read once per process)."""
    import sys
    from pathlib import Path

    from runtime import processes
    from runtime.artifacts import backends, store, uris, verify
    from runtime.compute import task, worker
    from runtime.endpoint import contract, signature
    from runtime.monitor import inference_log

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], contract, signature, inference_log, store, backends, uris, verify, worker,
                   task, processes):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def code_version(spec: ServeSpec, resources: ReplicaResources) -> str:
    """What makes Serve restart a deployment's replicas rather than hand them a new version in place: what they
    are constructed with, what they reserve, and the replica's own code."""
    what = json.dumps([spec.home(), dataclasses.asdict(resources), _replica_source_digest()], sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def server_class() -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class ModelServer:
        """One replica: constructed once per deployment, handed each version by :meth:`reconfigure`."""

        def __init__(self, home: dict[str, str]) -> None:
            import random
            import uuid

            from runtime.monitor.inference_log import InferenceWriter, error_dir, log_dir

            bind_replica_grpc_to_node_address()
            if home.get("staging"):  # loading the model must not slow the live replicas down
                with contextlib.suppress(OSError):
                    os.nice(STAGING_NICENESS)
            self._random = random.Random()
            self._uuid = uuid.uuid4
            self.replica = uuid.uuid4().hex[:12]
            self.writer = InferenceWriter(log_dir(home["artifact_root"], home["deployment"]), self.replica)
            self.errors = error_dir(home["artifact_root"], home["deployment"])
            self.loaded: Loaded | None = None

        def reconfigure(self, config: dict[str, Any]) -> None:
            """Load the version ``config`` names (its artifact verified first), then answer with it: requests
            already running finish on the version before, the next ones get this one."""
            spec = ServeSpec.from_user_config(config)
            self.loaded = load(spec)  # the version before goes, folder and all, when its last request ends

        def __del__(self) -> None:
            """Serve's graceful stop of the replica: the loaded version's folder goes with it."""
            loaded = getattr(self, "loaded", None)
            if loaded is not None:
                loaded.scratch.cleanup()

        async def __call__(self, request: Request) -> Any:
            from starlette.responses import Response

            from runtime.endpoint import contract as api

            request_id = serve_request_id() or self._uuid().hex
            started = time.perf_counter()
            loaded = self.loaded  # the version this request is answered by, whatever a switch does meanwhile
            assert loaded is not None, "Serve calls reconfigure before the first request"
            config = loaded.spec.api
            try:
                kind = api.check_route(request.method, api.sub_path(request.url.path,
                                                                    str(request.scope.get("root_path", ""))))
                api.check_token(config, request.headers.get("authorization"))
                if kind == "document":
                    return Response(loaded.document, media_type="application/json",
                                    headers={"X-Request-Id": request_id})
                api.check_content_type(request.headers.get("content-type"))
                api.check_declared_length(config, request.headers.get("content-length"))
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > config.max_body_bytes:
                        raise api.too_large(config)
                rows = api.rows_of(config, api.strict_json(bytes(body)))
                predictions = self._predict(loaded, rows, request_id)
                if predictions is None:
                    raise api.Problem(500, "model-failed", "The model failed",
                                      "the model's code failed on this request; find its traceback with `mlops logs "
                                      f"deployments.{loaded.spec.deployment} --request {request_id}`")
                ids = [self._uuid().hex for _ in rows]
                content = api.answer(predictions, ids, loaded.spec.version)
            except api.Problem as problem:
                return problem_response(problem, request_id)
            self._log(loaded, rows, predictions, ids, request_id, (time.perf_counter() - started) * 1000)
            return Response(content, media_type="application/json", headers={"X-Request-Id": request_id})

        def _predict(self, loaded: Loaded, rows: list[dict[str, Any]], request_id: str) -> list[Any] | None:
            """The model's predictions for ``rows`` as JSON values; ``None`` when its code failed (logged)."""
            import traceback

            from runtime.monitor.inference_log import ErrorRecord, write_error

            try:
                predictions = [json_value(p) for p in loaded.predictor(rows)]
                if len(predictions) != len(rows):
                    raise ValueError(f"load_predictor's callable returned {len(predictions)} predictions for "
                                     f"{len(rows)} rows")
                return predictions
            except Exception as exc:  # noqa: BLE001 - the model's own code: a 500 the request id finds
                write_error(self.errors, self.replica, ErrorRecord(
                    request_id, time.time(), loaded.spec.version, f"{type(exc).__name__}: {exc}",
                    traceback.format_exc()))
                return None

        def _log(self, loaded: Loaded, rows: list[dict[str, Any]], predictions: list[Any], ids: list[str],
                 request_id: str, latency_ms: float) -> None:
            from runtime.endpoint.contract import logged_inputs
            from runtime.monitor.inference_log import InferenceRecord

            now = time.time()
            for record_id, row, prediction in zip(ids, rows, predictions, strict=True):
                if self._random.random() < loaded.spec.sample_rate:
                    inputs = logged_inputs(loaded.spec.api, row)
                    self.writer.write(InferenceRecord(record_id, now, loaded.spec.version, inputs or {}, prediction,
                                                      latency_ms, request_id, len(rows)))

        def check_health(self) -> None:
            if self.loaded is None:  # pragma: no cover - reconfigure would have raised
                raise TaskError("no model loaded")

    return ModelServer
