"""What a monitor's checks are evaluated on: its deployment's logged traffic and its reference dataset.

- **current sample**: the deployment's newest :data:`MAX_RECORDS` logged records (more when an accuracy
  ``window`` asks for more) *served by the version now live* — a retrain or a rollback starts afresh;
- **drift windows count requests**: data and prediction drift are judged only once the sample holds the check's
  ``min_requests`` requests, and each request counts as at most the median request's rows (evenly spaced
  rows of a bigger one), so one request, however many rows it sends, cannot by itself make a drift;
- **data drift**: the check's ``columns``, or every column both the reference and the live inputs have;
- **prediction drift**: the live version's predictions on (up to :data:`MAX_REFERENCE_PREDICTIONS`)
  reference rows, through the trainer module's ``load_predictor``, against the logged predictions;
- **accuracy**: logged predictions joined by id with the labels fed back (``mlops monitor feedback``);
- **latency**: p95 of the requests' latencies (each request once, however many rows it had).

The reference is the dataset's newest snapshot, or the newest output of a derived dataset.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compiler.resolve import Project
from compiler.spec import AccuracyCheck
from runtime.artifacts.store import ArtifactStore
from runtime.artifacts.uris import parse_uri
from runtime.monitor.drift import InsufficientDataError
from runtime.monitor.inference_log import InferenceRecord, log_dir, read
from runtime.monitor.tables import Columns, Row, columns_of, like_reference, read_rows, values_array
from runtime.state.store import StateStore
from runtime.workspace import Workspace

MAX_RECORDS = 10_000
"""The newest logged records a monitor reads (an accuracy ``window`` larger than this reads more)."""
MAX_REFERENCE_PREDICTIONS = 5_000
"""Reference rows the live model scores for prediction drift (evenly spaced when there are more)."""


class Samples:
    """What a monitor's checks are evaluated on; each part is read once, when a check first needs it."""

    def __init__(self, project: Project, workspace: Workspace, store: StateStore, name: str) -> None:
        self.project, self.workspace, self.store, self.name = project, workspace, store, name
        self.monitor = monitor = project.spec.monitors[name]
        state = store.get_deployment(monitor.deployment)
        self.version: int | None = state.live_version if state else None
        self.model = project.spec.deployments[monitor.deployment].model
        self._records: list[InferenceRecord] | None = None
        self._reference: tuple[Columns, list[Row]] | None = None

    def records(self) -> list[InferenceRecord]:
        """The newest records served by the live version (any version while none is known), oldest first."""
        if self._records is None:
            windows = [c.window for c in self.monitor.checks if isinstance(c, AccuracyCheck)]
            limit = max([MAX_RECORDS, *windows])
            records = read(log_dir(self.workspace.artifact_root, self.monitor.deployment), limit=limit)
            if self.version is not None:
                records = [r for r in records if r.version == self.version]
            self._records = records
        if not self._records:
            served = f" served by version {self.version}" if self.version is not None else ""
            raise InsufficientDataError(f"no inference records of deployments.{self.monitor.deployment}{served} yet")
        return self._records

    def drift_records(self, min_requests: int) -> list[InferenceRecord]:
        """The records a drift check reads: each request's rows, at most the median request's count of them;
        :class:`InsufficientDataError` while fewer than ``min_requests`` requests were logged."""
        by_request: dict[str, list[InferenceRecord]] = {}
        for record in self.records():
            by_request.setdefault(record.request_id or record.id, []).append(record)
        if len(by_request) < min_requests:
            raise InsufficientDataError(
                f"{len(by_request)} request(s) logged for the live version; a drift check judges a window of at "
                f"least {min_requests} (min_requests), so that no single request decides it")
        each = max(1, int(np.median([len(rows) for rows in by_request.values()])))
        kept: list[InferenceRecord] = []
        for rows in by_request.values():
            picks = np.linspace(0, len(rows) - 1, each).astype(int) if len(rows) > each else range(len(rows))
            kept.extend(rows[i] for i in dict.fromkeys(int(p) for p in picks))
        return kept

    def current(self, min_requests: int = 1) -> Columns:
        columns = columns_of([r.inputs for r in self.drift_records(min_requests)])
        reference, _ = self._reference_table()
        return {name: like_reference(values, reference.get(name)) for name, values in columns.items()}

    def reference(self) -> Columns:
        return self._reference_table()[0]

    def predictions(self, min_requests: int | None = None) -> npt.NDArray[Any]:
        """The logged predictions: every one, or a drift window's (``min_requests``: :meth:`drift_records`)."""
        records = self.records() if min_requests is None else self.drift_records(min_requests)
        return values_array([r.prediction for r in records])

    def latencies(self) -> npt.NDArray[np.float64]:
        """One latency per request (a request's rows all carry its latency)."""
        by_request = {r.request_id or r.id: r.latency_ms for r in self.records()}
        return np.asarray(list(by_request.values()), dtype=float)

    def labelled(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
        """Logged predictions and their fed-back labels (NaN where none came back yet), aligned."""
        records = self.records()
        labels = self.store.feedback([r.id for r in records])
        if not labels:
            raise InsufficientDataError(f"no labels fed back for the {len(records)} logged predictions "
                                        "(use `mlops monitor feedback FILE`)")
        return self.predictions(), np.asarray([labels.get(r.id, math.nan) for r in records], dtype=float)

    def reference_predictions(self) -> npt.NDArray[Any]:
        """The live version's predictions on the reference rows."""
        if self.version is None:
            raise InsufficientDataError(f"deployments.{self.monitor.deployment} serves no version yet")
        _, rows = self._reference_table()
        if len(rows) > MAX_REFERENCE_PREDICTIONS:
            picks = np.linspace(0, len(rows) - 1, MAX_REFERENCE_PREDICTIONS).astype(int)
            rows = [rows[i] for i in picks]
        with tempfile.TemporaryDirectory(prefix="mlops-monitor-") as scratch:
            predictor = load_predictor(self.project, self.workspace, self.store, self.model, self.version,
                                       Path(scratch))
            return values_array(list(predictor(rows)))

    def _reference_table(self) -> tuple[Columns, list[Row]]:
        if self._reference is None:
            name = self.monitor.reference
            if name is None:
                raise InsufficientDataError(f"monitors.{self.name} has no `reference` dataset to compare with")
            uri = reference_uri(self.project, self.store, name)
            if uri is None:
                raise InsufficientDataError(f"datasets.{name} has no data yet (run `mlops apply`)")
            artifacts = ArtifactStore(self.workspace.artifact_root)
            dataset = self.project.spec.datasets[name]
            suffix = f".{dataset.format}" if dataset.format else Path(dataset.path or "").suffix
            with tempfile.TemporaryDirectory(prefix="mlops-reference-") as scratch:
                rows = read_rows(_local(artifacts, uri, Path(scratch)), suffix)
            if not rows:
                raise InsufficientDataError(f"datasets.{name} has no rows")
            self._reference = (columns_of(rows), rows)
        return self._reference


def reference_uri(project: Project, store: StateStore, dataset: str) -> str | None:
    """The artifact of a dataset's newest snapshot (source) or transform output (derived); ``None`` before any."""
    from runtime.apply.deploy import dataset_uri
    from runtime.errors import ApplyError

    try:
        return dataset_uri(project, store, dataset)
    except ApplyError:  # not built yet
        return None


def load_predictor(project: Project, workspace: Workspace, store: StateStore, model: str, version: int,
                   scratch: Path) -> Callable[[list[Row]], Iterable[Any]]:
    """``load_predictor`` of the model's trainer module, applied to one version's artifact."""
    from runtime.compute.worker import import_callable

    found = store.get_model_version(model, version)
    if found is None:
        raise LookupError(f"models.{model} has no version {version} in the state")
    module = project.spec.models[model].train.split(":")[0]
    loader = import_callable(f"{module}:load_predictor", found.code_hash, str(project.root))
    path = _local(ArtifactStore(workspace.artifact_root), found.artifact_uri, scratch)
    predictor: Callable[[list[Row]], Iterable[Any]] = loader(path, dict(found.params))
    return predictor


def _local(artifacts: ArtifactStore, uri: str, scratch: Path) -> Path:
    """A local path holding an artifact: the store's own copy (checked), or a download into ``scratch``."""
    local = artifacts.verified_path(uri)
    if local is not None:
        return local
    is_dir, _ = parse_uri(uri)
    return artifacts.materialize_dir(uri, scratch / "data") if is_dir else artifacts.get_file(uri, scratch / "file")
