"""Mirror the state store into an MLflow tracking store and model registry (``storage.mlflow``).

The state store stays the source of truth; MLflow gets a read-only copy that its UI, its clients and
tools built on them can use. :func:`mirror` is idempotent: each call adds what is not there yet and
moves what changed, finding earlier copies again by their tags.

What is mirrored, for a project ``P``:

* one MLflow experiment named ``P`` (tag ``mlops.project``);
* one MLflow run per finished state-store run (a run still running is left out until it ends),
  found again by its tag ``mlops.run_id``. It holds the run's params, every metric value at its
  step (the state store keeps no time per value: each is stamped with the run's end), the final
  metrics an evaluator or trainer returned that were not logged step by step (at step 0), the tags
  ``mlops.node_id``, ``mlops.address``, ``mlops.kind``, ``mlops.fingerprint``, ``mlops.attempt``,
  ``mlops.git_commit`` (also ``mlflow.source.git.commit``), ``mlops.git_dirty``, ``mlops.host``,
  ``mlops.device``, ``mlops.status``, ``mlops.error``, its status (``FINISHED`` or ``FAILED``) and
  times, and as artifacts its log (``log.txt``) and, for a training trial, the model it produced
  (under ``model/``);
* one registered model per mlops model, named ``P.<model>`` (so that projects sharing one tracking
  server do not collide), and one model version per mlops model version, in version order, with
  ``source`` ``runs:/<mirrored training run>/model``, and the tags ``mlops.version`` (the mlops
  number, which MLflow's own number need not equal), ``mlops.fingerprint``, ``mlops.status``
  (candidate / approved / rejected, kept current), ``mlops.code_hash``, ``mlops.git_commit`` and
  ``mlops.lineage`` (JSON: dataset address -> content hash);
* aliases: ``live-<deployment>`` on the version each deployment serves, and ``live`` on the version
  served by the deployment that changed last; they move when the served version changes and go
  when the deployment serves nothing.

A ``sqlite:///relative/path.db`` (or a bare path) is taken relative to the spec's directory, like
``storage.state``; with SQLite the run artifacts go to ``mlartifacts/P/`` beside the database file.
MLflow is imported only here, and only when a mirror runs; the client never touches MLflow's
process-wide settings (no ``mlflow.set_tracking_uri``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import MlopsError
from compiler.resolve import Project
from runtime.artifacts.store import ArtifactError, ArtifactStore
from runtime.state.records import DeploymentState, ModelVersion, Run
from runtime.state.store import StateStore

log = logging.getLogger("mlops.mlflow")

RUN_TAG = "mlops.run_id"
VERSION_TAG = "mlops.version"
LIVE_ALIAS = "live"
DEPLOYMENT_ALIAS = "live-"
MAX_TAG = 5000
MAX_PARAM = 6000
BATCH_METRICS = 1000
BATCH_PARAMS = 100
INSTALL_HINT = "pip install 'mlflow-skinny>=3' sqlalchemy alembic"


class MirrorError(MlopsError):
    """MLflow could not be reached, is not installed, or refused what was sent."""


@dataclass
class MirrorReport:
    """What one :func:`mirror` call did."""

    experiment_id: str
    runs_created: list[str] = field(default_factory=list)
    """The state-store run ids mirrored by this call."""
    runs_present: int = 0
    versions_created: list[str] = field(default_factory=list)
    """``<registered model>/<mlops version>`` of the model versions registered by this call."""
    aliases_set: list[str] = field(default_factory=list)
    """``<registered model>@<alias> -> <MLflow version>`` for each alias set or moved."""
    aliases_removed: list[str] = field(default_factory=list)


def resolve_uri(uri: str, base: Path) -> str:
    """``uri`` with a relative SQLite path or bare directory made absolute against ``base``."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return (base / uri).resolve().as_uri()
    return uri


def registered_name(project: str, model: str) -> str:
    """The registered model that mirrors ``models.<model>`` of ``project``."""
    return f"{project}.{model}"


def mirror(project: str, store: StateStore, artifacts: ArtifactStore, uri: str,
           registry_uri: str | None = None) -> MirrorReport:
    """Sync the state store's runs, model versions and live versions into MLflow at ``uri``.

    Raises :class:`MirrorError` when mlflow is missing or the store cannot be reached or written.
    """
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise MirrorError.one(f"storage.mlflow is set but the mlflow package is not installed ({INSTALL_HINT})") \
            from exc
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri or uri)
        return _Mirror(client, project, store, artifacts, uri).run()
    except MlflowException as exc:
        raise MirrorError.one(f"mirroring to MLflow at {uri} failed: {exc.message}") from exc
    except Exception as exc:  # a store that cannot be opened, a backend's missing driver, a refused write
        raise MirrorError.one(f"mirroring to MLflow at {uri} failed: {type(exc).__name__}: {exc}") from exc


def mirror_project(project: Project, store: StateStore, artifact_root: str) -> MirrorReport | None:
    """The apply / rollback hook: mirror when ``storage.mlflow`` is set; a failure is logged, never raised."""
    configured = project.spec.storage.mlflow
    if not configured:
        return None
    uri = resolve_uri(configured, project.spec_path.parent)
    try:
        return mirror(project.spec.project, store, ArtifactStore(artifact_root), uri)
    except Exception as exc:  # noqa: BLE001 - the apply's result stands whatever MLflow does
        log.warning("MLflow mirror skipped (the result stands): %s", exc)
        return None


class _Mirror:
    """One sync; every method is idempotent against what an earlier sync left in MLflow."""

    def __init__(self, client: Any, project: str, store: StateStore, artifacts: ArtifactStore, uri: str) -> None:
        self.client = client
        self.project = project
        self.store = store
        self.artifacts = artifacts
        self.uri = uri
        self.report = MirrorReport("")

    def run(self) -> MirrorReport:
        experiment_id = self._experiment()
        self.report.experiment_id = experiment_id
        mirrored = self._mirrored_runs(experiment_id)
        models = {model: self.store.model_versions(model) for model in self.store.models()}
        model_files = self._model_files(models)
        for run in self._finished_runs():
            if run.run_id in mirrored:
                self.report.runs_present += 1
                continue
            mirrored[run.run_id] = self._create_run(experiment_id, run, model_files.get(run.run_id))
            self.report.runs_created.append(run.run_id)
        deployments = self.store.deployments()
        for model, versions in sorted(models.items()):
            numbers = self._register(model, versions, mirrored)
            self._aliases(model, numbers, [d for d in deployments if d.model == model])
        return self.report

    # --- experiment and runs ---------------------------------------------------------------------

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.project)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return str(found.experiment_id)
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" / self.project).as_uri()
        return str(self.client.create_experiment(self.project, artifact_location=location,
                                                 tags={"mlops.project": self.project}))

    def _mirrored_runs(self, experiment_id: str) -> dict[str, str]:
        """State-store run id -> MLflow run id of the complete copies; a copy a crash left half-made goes."""
        found: dict[str, str] = {}
        stale: list[str] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], max_results=1000, page_token=token)
            for copy in page:
                origin = copy.data.tags.get(RUN_TAG)
                if origin is None:
                    continue
                if copy.info.status in ("FINISHED", "FAILED") and origin not in found:
                    found[origin] = copy.info.run_id
                else:
                    stale.append(copy.info.run_id)
            token = page.token
            if not token:
                break
        for run_id in stale:  # deleted after the search: deleting while paging would shift the pages
            self.client.delete_run(run_id)
        return found

    def _finished_runs(self) -> list[Run]:
        return self.store.runs_not_running()

    def _create_run(self, experiment_id: str, run: Run, model_file: str | None) -> str:
        from mlflow.entities import Metric, Param, RunTag

        tags = {RUN_TAG: run.run_id, "mlops.node_id": run.node_id, "mlops.address": run.address,
                "mlops.kind": run.kind, "mlops.fingerprint": run.fingerprint, "mlops.attempt": str(run.attempt),
                "mlops.git_dirty": str(run.git_dirty).lower(), "mlops.host": run.host, "mlops.device": run.device,
                "mlops.status": run.status}
        if run.git_commit:
            tags.update({"mlops.git_commit": run.git_commit, "mlflow.source.git.commit": run.git_commit})
        if run.error:
            tags["mlops.error"] = run.error[-MAX_TAG:]
        if model_file:
            tags["mlops.model_artifact"] = model_file
        started = int(run.started_at * 1000)
        ended = int((run.finished_at or run.started_at) * 1000)
        created = self.client.create_run(experiment_id, start_time=started, tags={RUN_TAG: run.run_id},
                                         run_name=run.node_id)
        run_id = created.info.run_id
        history = self.store.metric_history(run.run_id)
        stepped = {p.name for p in history}
        metrics = [Metric(p.name, p.value, ended, p.step) for p in history]
        metrics += [Metric(name, float(value), ended, 0) for name, value in sorted(run.metrics.items())
                    if name not in stepped]
        params = [Param(name, _text(value)[:MAX_PARAM]) for name, value in sorted(run.params.items())]
        run_tags = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(run_id, metrics=metrics[start:start + BATCH_METRICS])
        for start in range(0, len(params), BATCH_PARAMS):
            self.client.log_batch(run_id, params=params[start:start + BATCH_PARAMS])
        with tempfile.TemporaryDirectory(prefix="mlops-mlflow-") as scratch:
            try:
                if run.log_uri:
                    self.client.log_artifact(run_id, str(self.artifacts.get_file(run.log_uri,
                                                                                 Path(scratch) / "log.txt")))
                if model_file:
                    self._log_model(run_id, model_file, Path(scratch))
            except ArtifactError as exc:  # a lost or corrupt object: mirror the rest and say so
                run_tags.append(RunTag("mlops.artifact_error", str(exc)[:MAX_TAG]))
        self.client.log_batch(run_id, tags=run_tags)  # the tags last, with the status: a complete copy
        self.client.set_terminated(run_id, "FINISHED" if run.status == "succeeded" else "FAILED", end_time=ended)
        return str(run_id)

    def _log_model(self, run_id: str, uri: str, scratch: Path) -> None:
        """The model's file (``model/model.pt``, or ``model/model.bin`` when not a torch file) or directory."""
        folder = scratch / "model"
        if uri.startswith("dir:"):
            self.artifacts.materialize_dir(uri, folder)
        else:
            folder.mkdir()
            copy = self.artifacts.get_file(uri, folder / "model.bin")
            with open(copy, "rb") as handle:
                if handle.read(4) == b"PK\x03\x04":  # torch.save's zip format
                    copy.rename(folder / "model.pt")
        self.client.log_artifacts(run_id, str(folder), "model")

    def _model_files(self, models: dict[str, list[ModelVersion]]) -> dict[str, str]:
        """Run id -> the model file it trained: a model version's artifact, else a trial's recorded output."""
        files: dict[str, str] = {}
        for result in self.store.trial_results():
            artifact = result.outputs.get("artifact")
            if artifact and result.run_id:
                files[result.run_id] = str(artifact)
        for versions in models.values():
            for version in versions:
                if version.run_id:
                    files[version.run_id] = version.artifact_uri
        return files

    # --- registry --------------------------------------------------------------------------------

    def _register(self, model: str, versions: list[ModelVersion], mirrored: dict[str, str]) -> dict[int, str]:
        """Register each version not yet registered; returns mlops version -> MLflow version."""
        from mlflow.exceptions import MlflowException

        name = registered_name(self.project, model)
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                name, tags={"mlops.project": self.project, "mlops.model": model},
                description=f"models.{model} of the mlops project {self.project}, mirrored from its state store")
        existing: dict[int, Any] = {}
        for copy in self._search_versions(name):
            number = copy.tags.get(VERSION_TAG)
            if number is not None:
                existing.setdefault(int(number), copy)
        numbers: dict[int, str] = {}
        for version in versions:
            copy = existing.get(version.version)
            if copy is None:
                copy = self._create_version(name, version, mirrored.get(version.run_id or ""))
                self.report.versions_created.append(f"{name}/{version.version}")
            elif copy.tags.get("mlops.status") != version.status:
                self.client.set_model_version_tag(name, copy.version, "mlops.status", version.status)
            numbers[version.version] = str(copy.version)
        return numbers

    def _search_versions(self, name: str) -> list[Any]:
        found: list[Any] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _create_version(self, name: str, version: ModelVersion, mlflow_run: str | None) -> Any:
        tags = {VERSION_TAG: str(version.version), "mlops.fingerprint": version.fingerprint,
                "mlops.status": version.status, "mlops.artifact": version.artifact_uri,
                "mlops.lineage": json.dumps(version.data, sort_keys=True)[:MAX_TAG]}
        if version.code_hash:
            tags["mlops.code_hash"] = version.code_hash
        if version.git_commit:
            tags["mlops.git_commit"] = version.git_commit
        if mlflow_run is not None:
            source = f"runs:/{mlflow_run}/model"
        else:  # no mirrored run trained it: point at the artifact itself
            local = self.artifacts.local_path(version.artifact_uri)
            source = local.as_uri() if local is not None else f"{self.artifacts.root}/{version.artifact_uri}"
        return self.client.create_model_version(name, source, run_id=mlflow_run, tags=tags,
                                                description=version.reason or None)

    def _aliases(self, model: str, numbers: dict[int, str], deployments: list[DeploymentState]) -> None:
        """``live-<deployment>`` on each served version, ``live`` on the newest change; stale ones removed."""
        name = registered_name(self.project, model)
        wanted: dict[str, str] = {}
        serving = [d for d in deployments if d.live_version is not None and d.live_version in numbers]
        for deployment in serving:
            wanted[DEPLOYMENT_ALIAS + deployment.name] = numbers[deployment.live_version or 0]
        if serving:
            newest = max(serving, key=lambda d: (d.updated_at, d.name))
            wanted[LIVE_ALIAS] = numbers[newest.live_version or 0]
        current = self.client.get_registered_model(name).aliases
        for alias in current:
            if (alias == LIVE_ALIAS or alias.startswith(DEPLOYMENT_ALIAS)) and alias not in wanted:
                self.client.delete_registered_model_alias(name, alias)
                self.report.aliases_removed.append(f"{name}@{alias}")
        for alias, version in sorted(wanted.items()):
            if str(current.get(alias)) != version:
                self.client.set_registered_model_alias(name, alias, version)
                self.report.aliases_set.append(f"{name}@{alias} -> {version}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
