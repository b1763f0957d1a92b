"""Monitors at run time: gather their samples, evaluate their checks, keep the result, act on a breach.

A monitor compares what its deployment is asked and answers (the inference log) with its ``reference``
dataset (the newest snapshot, or the newest output of a derived dataset):

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

A check without enough data (no traffic yet, no reference snapshot, no labels) is ``skipped`` with the
reason; one that cannot be evaluated (a column missing, a model that does not load) is ``error``. Neither
is a breach. On a breach the ``on_breach`` actions run: ``retrain`` and ``rollback`` first, then
``alert`` (a log line on the ``mlops.monitor`` logger and, with ``webhook`` set, an HTTP POST of the
result) so that the alert says what was done. Every result is kept in the state with its history.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compiler.errors import MlopsError
from compiler.resolve import Project
from compiler.spec import AccuracyCheck, DataDriftCheck, Monitor, PredictionDriftCheck, duration_seconds
from runtime.artifacts.store import ArtifactStore, parse_uri
from runtime.monitor.checks import AnyCheck, evaluate_check
from runtime.monitor.drift import DEFAULT_DRIFT_SHARE, InsufficientDataError, default_threshold
from runtime.monitor.inference_log import InferenceRecord, log_dir, read
from runtime.state.records import MonitorResult
from runtime.state.store import StateStore
from runtime.workspace import Workspace

logger = logging.getLogger("mlops.monitor")

MAX_RECORDS = 10_000
"""The newest logged records a monitor reads (an accuracy ``window`` larger than this reads more)."""
MAX_REFERENCE_PREDICTIONS = 5_000
"""Reference rows the live model scores for prediction drift (evenly spaced when there are more)."""
WEBHOOK_TIMEOUT_S = 5.0
DATA_SUFFIXES = (".csv", ".jsonl", ".parquet", ".npz", ".npy")

Columns = dict[str, npt.NDArray[Any]]
Row = dict[str, Any]


# --- scheduling and running -------------------------------------------------------------------------


def due(project: Project, store: StateStore, now: float) -> list[str]:
    """Monitors whose ``schedule`` has elapsed since their last result (or that never ran), in spec order."""
    names = []
    for name, monitor in project.spec.monitors.items():
        last = store.monitor_results(name, limit=1)
        if not last or now - last[-1].at >= duration_seconds(monitor.schedule):
            names.append(name)
    return names


def run_monitors(project: Project, store: StateStore, names: Iterable[str] | None = None,
                 now: float | None = None, force: bool = True) -> list[MonitorResult]:
    """Evaluate monitors (all, or ``names``), store each result and act on breaches.

    ``force=False`` runs only the ones :func:`due` at ``now``. An unknown name is an :class:`MlopsError`.
    """
    at = time.time() if now is None else now
    chosen = list(project.spec.monitors) if names is None else list(dict.fromkeys(names))
    for name in chosen:
        if name not in project.spec.monitors:
            from compiler.suggest import did_you_mean

            raise MlopsError.one(f"unknown monitor '{name}'{did_you_mean(name, project.spec.monitors)}")
    if not force:
        ready = set(due(project, store, at))
        chosen = [name for name in chosen if name in ready]
    workspace = Workspace.of(project)
    return [run_monitor(project, workspace, store, name, at) for name in chosen]


def run_monitor(project: Project, workspace: Workspace, store: StateStore, name: str, at: float) -> MonitorResult:
    """Evaluate one monitor now, act on a breach, store and return the result."""
    monitor = project.spec.monitors[name]
    samples = Samples(project, workspace, store, name)
    checks = [evaluate(check, samples) for check in monitor.checks]
    breached = any(c["status"] == "breached" for c in checks)
    result = MonitorResult(name, monitor.deployment, samples.version, at, breached, checks, [])
    if breached:
        result.actions = act(project, store, name, monitor, result)
    store.add_monitor_result(result)
    return result


def result_json(result: MonitorResult) -> dict[str, Any]:
    """A result as JSON (what ``--json`` prints and the webhook receives)."""
    return {"address": f"monitors.{result.monitor}", **asdict(result)}


def check_errors(result: MonitorResult) -> list[str]:
    """One line per check of ``result`` that could not be evaluated (status ``error``), with its reason."""
    return [f"monitors.{result.monitor}: check {index} ({check.get('type')}, {check.get('method')}) could not be "
            f"evaluated: {check.get('reason') or 'no reason recorded'}"
            for index, check in enumerate(result.checks) if check.get("status") == "error"]


# --- checks -----------------------------------------------------------------------------------------


def evaluate(check: AnyCheck, samples: Samples) -> dict[str, Any]:
    """One check as a result dict: :meth:`CheckResult.to_json` plus ``status`` (ok, breached, skipped, error)."""
    try:
        if isinstance(check, DataDriftCheck):
            outcome = evaluate_check(check, samples.reference(), samples.current(check.min_requests))
        elif isinstance(check, PredictionDriftCheck):
            outcome = evaluate_check(check, None, None, samples.predictions(check.min_requests),
                                     reference_predictions=samples.reference_predictions())
        elif isinstance(check, AccuracyCheck):
            predictions, labels = samples.labelled()
            outcome = evaluate_check(check, None, None, predictions, labels)
        else:
            outcome = evaluate_check(check, None, None, latencies_ms=samples.latencies())
    except InsufficientDataError as exc:
        return _not_evaluated(check, "skipped", str(exc))
    except Exception as exc:  # noqa: BLE001 - a check that cannot run is reported, never a crash
        logger.warning("monitors.%s: a %s check could not be evaluated: %s", samples.name, check.type, exc)
        return _not_evaluated(check, "error", f"{type(exc).__name__}: {exc}")
    return {**outcome.to_json(), "status": "breached" if outcome.breached else "ok"}


def _not_evaluated(check: AnyCheck, status: str, reason: str) -> dict[str, Any]:
    return {"type": check.type, "method": check_method(check), "score": None, "score_kind": None,
            "threshold": check_threshold(check), "breach_when": None, "breached": False, "detail": {},
            "status": status, "reason": reason}


def check_method(check: AnyCheck) -> str:
    if isinstance(check, DataDriftCheck | PredictionDriftCheck):
        return check.method
    return check.metric if isinstance(check, AccuracyCheck) else "p95"


def check_threshold(check: AnyCheck) -> float:
    """The threshold the check's ``score`` is held to (data drift: the share of drifted columns)."""
    if isinstance(check, DataDriftCheck):
        return DEFAULT_DRIFT_SHARE
    if isinstance(check, PredictionDriftCheck):
        return check.threshold if check.threshold is not None else default_threshold(check.method)
    return check.min if isinstance(check, AccuracyCheck) else check.p95_ms


# --- samples ----------------------------------------------------------------------------------------


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
        return {name: _like(values, reference.get(name)) for name, values in columns.items()}

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
    from runtime.apply.executor import dataset_uri

    try:
        return dataset_uri(project, store, dataset)
    except RuntimeError:  # not built yet
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


# --- tables -----------------------------------------------------------------------------------------


def read_rows(path: Path, suffix: str = "") -> list[Row]:
    """Rows of a CSV, JSONL, Parquet, ``.npz`` or ``.npy`` file, or of every such file under a directory
    (one format).

    A file's format is its suffix, else ``suffix`` (a content-addressed snapshot has none), else CSV.
    CSV cells are typed per column: a column whose non-empty cells are all numbers becomes floats
    (empty cells NaN), any other stays strings (empty cells ``None``). NumPy files are read without
    pickles: an ``.npz`` gives one column per 1-D array (named by its key) and ``KEY_0``, ``KEY_1``, ...
    per column of a 2-D array; an ``.npy`` holds one array: a structured one gives a column per field,
    a 1-D one the column ``value`` and a 2-D one ``column_0``, ``column_1``, ...
    """
    if path.is_file():
        files = [(path, path.suffix if path.suffix in DATA_SUFFIXES else suffix)]
    else:
        files = [(p, p.suffix) for p in sorted(path.rglob("*")) if p.suffix in DATA_SUFFIXES]
    if not files:
        raise ValueError(f"no CSV, JSONL, Parquet, .npz or .npy file in {path}")
    kinds = {kind for _, kind in files}
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes data formats ({', '.join(sorted(kinds))}); cannot read it as one table")
    rows: list[Row] = []
    for file, kind in files:
        rows.extend(_read_file(file, kind))
    return rows


def _read_file(file: Path, kind: str) -> list[Row]:
    if kind not in ("", *DATA_SUFFIXES):
        raise ValueError(f"cannot read {kind.lstrip('.')} data as a table "
                         "(monitors read csv, jsonl, parquet, npz and npy)")
    if kind in (".npz", ".npy"):
        return _read_numpy(file, kind)
    if kind == ".jsonl":
        with file.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if kind == ".parquet":
        import pyarrow.parquet as pq

        rows: list[Row] = pq.read_table(file).to_pylist()
        return rows
    with file.open(newline="", encoding="utf-8") as handle:
        raw = list(csv.DictReader(handle))
    names = list(raw[0]) if raw else []
    numeric = {name for name in names if all(_is_number(r[name]) for r in raw if r[name] not in ("", None))}
    return [{name: (float(r[name]) if r[name] not in ("", None) else math.nan) if name in numeric
             else (r[name] if r[name] != "" else None) for name in names} for r in raw]


def _read_numpy(file: Path, kind: str) -> list[Row]:
    """Rows of an ``.npz`` or ``.npy`` file (see :func:`read_rows` for the column names)."""
    columns: dict[str, npt.NDArray[Any]] = {}
    if kind == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            arrays = [(key, archive[key]) for key in archive.files]
    else:
        array = np.load(file, allow_pickle=False)
        if array.dtype.names:
            arrays = [(name, array[name]) for name in array.dtype.names]
        else:
            arrays = [("value" if array.ndim == 1 else "column", array)]
    for key, array in arrays:
        if array.ndim == 1:
            columns[key] = array
        elif array.ndim == 2:
            columns.update((f"{key}_{i}", array[:, i]) for i in range(array.shape[1]))
        else:
            raise ValueError(f"{file.name}: array {key!r} has shape {array.shape}; a table needs 1-d or 2-d arrays")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{file.name}: arrays of different lengths cannot be one table "
                         f"({', '.join(f'{n}: {k}' for n, k in lengths.items())})")
    names = list(columns)
    values = [columns[name].tolist() for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def columns_of(rows: list[Row]) -> Columns:
    """Rows (dicts) -> column -> values, every key of any row; missing values ``None``/NaN."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {name: values_array([row.get(name) for row in rows]) for name in names}


def values_array(values: list[Any]) -> npt.NDArray[Any]:
    """Floats when every present value is a real number (``None`` -> NaN), else strings (``None`` kept)."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in present):  # numpy's too
        return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    out = np.empty(len(values), dtype=object)
    out[:] = [None if v is None else str(v) for v in values]
    return out


def _like(current: npt.NDArray[Any], reference: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """Numbers sent as strings become floats when the reference column is numeric (JSON clients vary)."""
    if reference is None or reference.dtype == object or current.dtype != object:
        return current
    present = [v for v in current if v is not None]
    if not all(_is_number(v) for v in present):
        return current
    return np.asarray([math.nan if v is None else float(v) for v in current], dtype=float)


# --- feedback ---------------------------------------------------------------------------------------


def read_feedback(path: Path) -> list[tuple[str, float]]:
    """Labels from a CSV (a header with ``id`` and ``label``) or a JSONL file (``{"id": .., "label": ..}``).

    A label is a number (``true``/``false`` count as 1/0); a bad line is an :class:`MlopsError` naming it.
    """
    from compiler.errors import Position

    def fail(line: int, message: str) -> MlopsError:
        return MlopsError.one(message, Position(str(path), line, 1))

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MlopsError.one(f"cannot read {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[str, float]] = []
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(number, f"not JSON: {exc.msg}") from None
            if not isinstance(raw, dict) or "id" not in raw or "label" not in raw:
                raise fail(number, 'each line must be an object with "id" and "label"')
            pairs.append((str(raw["id"]), _label(raw["label"], path, number)))
        return pairs
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
        raise fail(1, f"the header must name the columns id and label (got: {', '.join(reader.fieldnames or [])})")
    for row in reader:
        number = reader.line_num
        if not row.get("id"):
            raise fail(number, "empty id")
        pairs.append((row["id"], _label(row["label"], path, number)))
    return pairs


def _label(value: Any, path: Path, line: int) -> float:
    from compiler.errors import Position

    def fail(message: str) -> MlopsError:
        return MlopsError.one(message, Position(str(path), line, 1))

    if isinstance(value, bool) or str(value).strip().lower() in ("true", "false"):
        return float(value is True or str(value).strip().lower() == "true")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise fail(f"label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise fail(f"label {value!r} is not a finite number")
    return number


def store_feedback(workspace: Workspace, store: StateStore, labels: list[tuple[str, float]]) -> tuple[int, int]:
    """Store labels; returns ``(stored, matching a logged prediction of any deployment)``."""
    store.add_feedback(labels)
    wanted = {pid for pid, _ in labels}
    logged: set[str] = set()
    root = Path(workspace.artifact_root) / "inference"
    if "://" not in workspace.artifact_root and root.is_dir():
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            logged.update(r.id for r in read(directory) if r.id in wanted)
    return len(labels), len(logged)


# --- actions ----------------------------------------------------------------------------------------


def act(project: Project, store: StateStore, name: str, monitor: Monitor, result: MonitorResult) -> list[str]:
    """Run a breach's ``on_breach`` actions (retrain and rollback, then alert); what was done, one line each."""
    done: list[str] = []
    ordered = [a for a in monitor.on_breach if a != "alert"] + [a for a in monitor.on_breach if a == "alert"]
    for action in dict.fromkeys(ordered):
        if action == "retrain":
            done.append(_retrain(store, name, project.spec.deployments[monitor.deployment].model))
        elif action == "rollback":
            done.append(_rollback(project, store, name, monitor.deployment))
        else:
            result.actions = list(done)
            done.extend(_alert(project, name, monitor, result))
    return done


def _retrain(store: StateStore, name: str, model: str) -> str:
    already = any(r.model == model for r in store.open_retrain_requests())
    store.request_retrain(model, f"monitors.{name}")
    return f"retrain: models.{model} already requested" if already else f"retrain: requested models.{model}"


def _rollback(project: Project, store: StateStore, name: str, deployment: str) -> str:
    from runtime.apply.operations import rollback

    try:
        outcome = rollback(project, deployment, reason=f"monitor breach: monitors.{name}", store=store)
    except MlopsError as exc:  # no earlier version passed the gates, or its rollout did not go live
        why = "; ".join(d.message for d in exc.diagnostics)
        verdict = "failed" if why.startswith("rollout of version") else "impossible"
        logger.error("monitors.%s: rollback of deployments.%s %s: %s", name, deployment, verdict, why)
        return f"rollback {verdict}: {why}"
    except Exception as exc:  # noqa: BLE001 - a failed rollout leaves the old version serving; report it
        logger.error("monitors.%s: rollback of deployments.%s failed: %s", name, deployment, exc)
        return f"rollback failed: {exc}"
    return f"rollback: deployments.{deployment} {outcome.from_version} -> {outcome.to_version}"


def _alert(project: Project, name: str, monitor: Monitor, result: MonitorResult) -> list[str]:
    breached = [f"{c['type']} ({c['method']}: {_number(c['score'])} vs {_number(c['threshold'])})"
                for c in result.checks if c["status"] == "breached"]
    logger.warning("monitors.%s breached on deployments.%s version %s: %s%s", name, monitor.deployment,
                   result.version, ", ".join(breached),
                   f"; done: {', '.join(result.actions)}" if result.actions else "")
    done = ["alert: logged"]
    if monitor.webhook:
        payload = {"project": project.spec.project, **result_json(result)}
        done.append(post_webhook(monitor.webhook, payload, f"monitors.{name}"))
    return done


def post_webhook(url: str, payload: dict[str, Any], who: str) -> str:
    """POST ``payload`` as JSON to an http(s) URL; a failure is logged and described, never raised."""
    if not url.startswith(("http://", "https://")):
        logger.error("%s: webhook %s is not an http(s) URL; not posted", who, url)
        return f"alert: webhook not posted: {url} is not an http(s) URL"
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "mlops-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return f"alert: webhook {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        logger.error("%s: webhook %s failed: %s", who, url, reason)
        return f"alert: webhook failed: {reason}"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)
